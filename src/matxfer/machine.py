"""What a run ran on: a plain-data description of the machine, for reports and benchmark JSON."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str | None:
    """The CPU's model name (Linux ``/proc/cpuinfo``; else :func:`platform.processor`), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def describe() -> dict[str, Any]:
    """Platform, CPU, core count, torch version and threads, and the GPU if torch sees one."""
    import torch

    from matxfer import __version__

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "matxfer": __version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def summary(info: dict[str, Any]) -> str:
    """One line for a report, e.g. ``2 CPU cores (AMD EPYC ...), no GPU; torch 2.13.0; Linux-...``."""
    cpu = f"{info.get('cpus')} CPU cores" + (f" ({info['cpu']})" if info.get("cpu") else "")
    gpu = f"GPU {info['gpu']}" if info.get("gpu") else "no GPU"
    return f"{cpu}, {gpu}; torch {info.get('torch')}; matxfer {info.get('matxfer')}; {info.get('platform')}"
