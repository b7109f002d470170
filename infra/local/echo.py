"""What a person watching ``tollgate up`` should see from the children's logs: a model loading,
loaded or unloaded (the inference function's lifecycle lines), echoed as they are written.

A first request to a cold tier waits for the model to load; without this line the terminal
would be silent while it does. Each ``infer*.log`` is followed from where it ended when
``tollgate up`` started (or from its start, if it appeared later), so earlier runs stay quiet."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

# The infer function's lifecycle logger (infer_fn/lifecycle.py), as the log format writes it.
LIFECYCLE = " infer_fn.lifecycle "
LOGS = "infer*.log"


class LogEcho:
    def __init__(self, log_dir: Path, say: Callable[[str], None]) -> None:
        self.log_dir = log_dir
        self.say = say
        self._offsets = {path: path.stat().st_size for path in log_dir.glob(LOGS)}
        self._partial: dict[Path, bytes] = {}

    def poll(self) -> None:
        """Echo the lifecycle lines written since the last poll, each after its process."""
        for path in sorted(self.log_dir.glob(LOGS)):
            for line in self._new_lines(path):
                _, found, message = line.partition(LIFECYCLE)
                if found:
                    self.say(f"{path.stem}: {message.strip()}")

    def _new_lines(self, path: Path) -> list[str]:
        offset = self._offsets.get(path, 0)
        try:
            if path.stat().st_size < offset:  # replaced or truncated: start over
                offset = 0
            with path.open("rb") as f:
                f.seek(offset)
                chunk = self._partial.pop(path, b"") + f.read()
                self._offsets[path] = f.tell()
        except OSError:
            return []
        complete, _, rest = chunk.rpartition(b"\n")
        if rest:
            self._partial[path] = rest  # a line still being written: finish it next time
        return complete.decode("utf-8", errors="replace").splitlines() if complete else []
