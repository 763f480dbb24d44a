"""Facts about the training machine: its processor name and whether it computes bf16 natively."""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# CPU flags under which oneDNN runs bf16 convolutions and matrix products in hardware.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_model_name() -> str:
    """Return the CPU's model name from ``/proc/cpuinfo``, or the platform's processor string elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Return whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX) rather than emulating it."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(check) for check in checks):
        return any(check() for check in checks)
    # Older or newer PyTorch builds may lack these private checks: read the kernel's flag list.
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return any(flag in line.split() for flag in NATIVE_BF16_CPU_FLAGS)
    except OSError:
        pass
    return False


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """Return the precision Accelerate runs for ``--mixed-precision``: ``"auto"`` picks bf16 only where it is native.

    Without hardware support, bf16 autocast on a CPU is emulated and slows training down instead
    of speeding it up (about 10 times on a 2-core AVX2 EPYC, see ``benchmarks/README.md``).
    """
    if device.type == "cuda":
        # By default PyTorch also counts GPUs that only emulate bf16 (compute capability below 8).
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    elif device.type == "cpu":
        native = cpu_has_native_bf16()
    else:
        native = False
    if requested == "auto":
        return "bf16" if native else "no"
    if requested == "bf16" and not native:
        logger.warning(
            "--mixed-precision bf16 on a %s without native bf16 support: autocast is emulated and "
            "training may run several times slower. Use --mixed-precision auto or no.",
            device.type.upper(),
        )
    return requested
