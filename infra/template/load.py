"""Loading ``template.yaml``: YAML with line numbers, then the schema, then the cross-checks.

Every problem names the file, the YAML path and the line, and says what would be valid; all of
them are reported at once.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from infra.template.checks import cross_check
from infra.template.problems import Problem, TemplateError
from infra.template.schema import API_VERSION, Template
from infra.template.yaml_lines import load_located


def load_template(path: str | Path) -> Template:
    """Parse, type-check and cross-check a template; raise TemplateError naming every problem."""
    path = Path(path)
    return parse_template(path.read_text(encoding="utf-8"), str(path))


def parse_template(text: str, file: str = "template.yaml") -> Template:
    try:
        located = load_located(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise TemplateError(file, [Problem((), f"not valid YAML: {exc}", line)]) from None
    if not isinstance(located.data, dict):
        raise TemplateError(
            file, [Problem((), "the template must be a mapping starting with apiVersion", 1)]
        )
    try:
        template = Template.model_validate(located.data)
    except ValidationError as exc:
        problems = [
            Problem(tuple(e["loc"]), _explain(e), located.line_of(tuple(e["loc"])))
            for e in exc.errors()
        ]
        raise TemplateError(file, problems) from None
    problems = [Problem(p.path, p.message, located.line_of(p.path)) for p in cross_check(template)]
    if problems:
        raise TemplateError(file, problems)
    return template


def _explain(error: ErrorDetails) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown field (check spelling; fields are camelCase as in the shipped template)"
    if error["type"] == "literal_error" and error["loc"] and error["loc"][0] == "apiVersion":
        return f"{message}; this loader reads {API_VERSION}"
    return message
