"""The processor name that training records and benchmark results quote."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model_name() -> str:
    """Return the CPU's model name from ``/proc/cpuinfo``, or the platform's processor string elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
