"""The console's forms (WTForms through Flask-WTF: every one carries and checks a CSRF token).

Fields only shape input for a person (labels, a credits field that takes 1,000,000); the
ledger's own models (ledger_fn.admin's NewAccount, NewGrant) validate what is applied, so the
console and the admin API accept and refuse exactly the same things."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from flask_wtf import FlaskForm
from wtforms import (
    DateField,
    HiddenField,
    IntegerField,
    PasswordField,
    SelectField,
    StringField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional

from events.fields import MAX_AMOUNT
from events.ledger import Origin

ORIGINS: tuple[Origin, ...] = ("top-up", "promotion", "adjustment")


class CreditsField(IntegerField):
    """A whole number of credits, written as people write it: 1,000,000 or 1 000 000."""

    def process_formdata(self, valuelist: Sequence[Any]) -> None:
        if valuelist:
            cleaned = str(valuelist[0]).replace(",", "").replace("_", "").replace(" ", "")
            valuelist = [cleaned.replace("\u202f", "").replace("\u00a0", "")]
        super().process_formdata(valuelist)


class LoginForm(FlaskForm):
    token = PasswordField("Admin token", validators=[DataRequired()])


class LogoutForm(FlaskForm):
    pass


class NewAccountForm(FlaskForm):
    account_id = StringField(
        "Account id",
        validators=[DataRequired(), Length(max=64)],
        description="Letters, digits, - and _ (e.g. acme-robotics)",
    )
    name = StringField("Name", validators=[Optional(), Length(max=200)])
    # The plan is checked by the admin API's rule (ledger_fn.admin.check_plan), like the API's.
    plan = SelectField("Plan", choices=[SelectChoice("", "No plan")], validate_choice=False)
    slice_ids = StringField(
        "Network slices",
        validators=[Optional(), Length(max=4000)],
        description="Slice ids, separated by commas or spaces",
    )


class SlicesForm(FlaskForm):
    slice_ids = StringField(
        "Bind network slices",
        validators=[DataRequired(), Length(max=4000)],
        description="Slice ids, separated by commas or spaces",
    )


class GrantForm(FlaskForm):
    amount = CreditsField(
        "Credits",
        validators=[
            InputRequired(),
            NumberRange(min=1, max=MAX_AMOUNT, message="give a whole number of at least 1 credit"),
        ],
        description="A whole number, e.g. 1,000,000",
    )
    origin = SelectField("Kind", choices=[SelectChoice(o) for o in ORIGINS], default="top-up")
    expires = DateField("Expires (optional)", validators=[Optional()])
    reference = StringField("Reference (optional)", validators=[Optional(), Length(max=128)])
    # One per rendered form: a double click, or a resubmission, grants once.
    idempotency_key = HiddenField(default=lambda: uuid.uuid4().hex)


class IssueKeyForm(FlaskForm):
    pass


class RevokeKeyForm(FlaskForm):
    key_id = HiddenField(validators=[DataRequired(), Length(max=128)])


def split_ids(text: str | None) -> list[str]:
    return [part for part in (text or "").replace(",", " ").split() if part]
