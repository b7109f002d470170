"""JSON from outside, read so that bad input is a 400, never a 500 deeper in.

Two things valid-looking JSON can carry that break what comes after the parser: nesting deep
enough to exhaust the parser's (or a later encoder's) recursion, and lone UTF-16 surrogates
(``"\\ud800"``), which decode to a Python string no UTF-8 encoder accepts (a store write, a
payload hash). Both are refused here with a message that says what to fix. Every function's
Flask app reads request bodies through ``CheckedJSON`` (functions/app.py), and the CloudEvent
parser (functions/cloudevent.py) checks events the same way."""

from __future__ import annotations

import json
import re
from typing import Any

from flask.json.provider import DefaultJSONProvider

from functions.errors import BadRequest

MAX_DEPTH = 64
# Only escapes \uD800-\uDFFF can produce a surrogate: a body without one needs no walk.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(text: str | bytes, what: str = "the body") -> Any:
    """Parse ``text``; BadRequest for invalid JSON, nesting deeper than MAX_DEPTH, or a lone
    surrogate in any string or key."""
    try:
        return _loads(text, what)
    except ValueError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}", code="invalid_json") from exc


def _loads(text: str | bytes, what: str) -> Any:
    """ValueError for text that is no JSON at all; BadRequest for what follows."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep(what) from None
    if isinstance(text, str):
        escapes = _SURROGATE.search(text) is not None or "\\u" in text
    else:
        escapes = _SURROGATE_ESCAPE.search(text) is not None
    check(value, what, escapes=escapes)
    return value


def check(value: Any, what: str, *, escapes: bool = True) -> None:
    """Refuse nesting deeper than MAX_DEPTH and (``escapes``: the text had surrogate escapes)
    lone surrogates, walking ``value`` without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > MAX_DEPTH:
                raise _too_deep(what)
            for key, item in node.items():
                if escapes and _SURROGATE.search(key):
                    raise _surrogate(what)
                stack.append((item, depth + 1))
        elif isinstance(node, list):
            if depth > MAX_DEPTH:
                raise _too_deep(what)
            stack.extend((item, depth + 1) for item in node)
        elif escapes and isinstance(node, str) and _SURROGATE.search(node):
            raise _surrogate(what)


def _too_deep(what: str) -> BadRequest:
    return BadRequest(
        f"{what} nests JSON objects or arrays deeper than {MAX_DEPTH} levels; flatten it",
        code="invalid_json",
    )


def _surrogate(what: str) -> BadRequest:
    return BadRequest(
        f"{what} has a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair), which "
        "is no Unicode text; send the character itself or a valid surrogate pair",
        code="invalid_json",
    )


class CheckedJSON(DefaultJSONProvider):
    """Flask's JSON, with request bodies checked as ``loads`` does. Text that is no JSON stays
    the ValueError ``get_json(silent=True)`` turns into None; too deep or a lone surrogate is a
    BadRequest, which silence does not swallow."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return _loads(s, "the body")
