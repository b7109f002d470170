"""`tollgate up` echoes the infer functions' lifecycle lines (a model loading, loaded) as they
are written, and nothing else, and nothing written before it started."""

from __future__ import annotations

from pathlib import Path

from infra.local.echo import LogEcho

LOADING = "2026-11-29 10:00:00,001 infer_fn.lifecycle M: loading the model (cold start)\n"


def test_only_new_lifecycle_lines_are_echoed_whole(tmp_path: Path) -> None:
    edge = tmp_path / "infer-edge.log"
    edge.write_text(LOADING)  # an earlier run's line
    (tmp_path / "ledger.log").write_text("")
    said: list[str] = []
    echo = LogEcho(tmp_path, said.append)
    echo.poll()
    assert said == []
    with edge.open("a") as f:
        f.write("2026-11-29 10:00:01,000 waitress serving on http://127.0.0.1:1\n")
        f.write("2026-11-29 10:00:02,000 infer_fn.lifecycle M: model loa")  # half written
    echo.poll()
    assert said == []
    with edge.open("a") as f:
        f.write("ded in 0.31 s\n")
    (tmp_path / "infer-cloud.log").write_text(LOADING)  # a process started after tollgate up
    (tmp_path / "ledger.log").write_text(LOADING.replace("infer_fn", "ledger_fn"))
    echo.poll()
    assert said == [
        "infer-cloud: M: loading the model (cold start)",
        "infer-edge: M: model loaded in 0.31 s",
    ]
    echo.poll()
    assert len(said) == 2
