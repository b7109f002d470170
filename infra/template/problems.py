"""Template problems: where in the file (YAML path and line) and what would be valid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    path: tuple[str | int, ...]
    message: str
    line: int | None = None

    def where(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
        return out or "(document)"


class TemplateError(ValueError):
    def __init__(self, file: str, problems: Sequence[Problem]) -> None:
        self.file = file
        self.problems = tuple(problems)
        lines = [f"{file}:{p.line or '?'}: {p.where()}: {p.message}" for p in self.problems]
        super().__init__(f"{len(lines)} problem(s) in {file}:\n" + "\n".join(lines))
