"""Peak resident memory of a benchmark process, the one memory counter a CPU has.

Each contender trains in a fresh process and resets the peak where its measurement
starts: after the imports, so that the Python/torch runtime does not count (the core
suite resets it after building the model too, to measure training alone).
"""
from __future__ import annotations

import resource
from pathlib import Path


def rss_mb(field: str = "VmHWM") -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Writing 5 to clear_refs resets the peak RSS (Linux >= 4.0), so imports do not count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
