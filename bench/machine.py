"""What every benchmark prints next to its figures: the machine it ran on, and how busy it was."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe() -> str:
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} cores, load average {load}, Python {platform.python_version()}"
    )
