"""YAML loading that remembers where every value came from, so errors can name file and line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Located:
    """The parsed document plus the 1-based line of every mapping key and sequence item."""

    data: Any
    lines: dict[Path, int]

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """Line of the deepest part of ``path`` that exists in the file.

        A missing key (a required field, an absent price) reports its parent's line; parts that
        are not in the file at all (pydantic's union tags) are skipped.
        """
        found: Path = ()
        best = self.lines.get((), None)
        for part in path:
            candidate = (*found, part)
            if candidate in self.lines:
                found = candidate
                best = self.lines[candidate]
        return best


def load_located(text: str) -> Located:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Located(None, {})
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    lines: dict[Path, int] = {(): node.start_mark.line + 1}
    _index(node, (), lines)
    return Located(data, lines)


def _index(node: yaml.Node, path: Path, lines: dict[Path, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, str(key.value))
            lines[child] = key.start_mark.line + 1
            _index(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _index(item, (*path, i), lines)
