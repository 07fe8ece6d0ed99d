"""What the CPU training runs on can do. Kept apart from swift_plugin.py (which loads torch and ms-swift) so that
`xtk advise` can ask it without loading either."""

from __future__ import annotations

from pathlib import Path


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bfloat16 in hardware; elsewhere torch emulates it, slower than float32."""
    try:
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split(":", 1)[-1].split()))
