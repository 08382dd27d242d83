"""What every benchmark prints first, and the small helpers they share."""

from __future__ import annotations

import platform
import statistics
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def header(device: torch.device, title: str) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"# {title}")
    print(
        f"# {platform.node()} | python {platform.python_version()} | torch {torch.__version__} | "
        f"{device} ({name}) | {torch.get_num_threads()} threads"
    )


def median(values) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def peak_rss_mb(pid: int | str = "self") -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status")
