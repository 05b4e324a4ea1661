"""The machine a benchmark ran on, for its report: host, OS, Python, CPU (with the vector extensions that decide
int8/bf16 speed), memory and GPUs."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import psutil


def describe_machine() -> dict:
    """The machine the client runs on (usually the server's too)."""
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_cores": psutil.cpu_count(logical=True),
        "cpu_flags": _cpu_flags(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": _gpu_names(),
    }


def _cpu_model() -> str:
    """The CPU's marketing name. psutil has none to give; Linux's /proc/cpuinfo has it, other systems'
    `platform.processor()` may."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# The extensions ONNX Runtime's and PyTorch's CPU kernels choose between (int8 dot products, bf16, AMX tiles).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpu_flags() -> list[str] | None:
    """Which of SPEED_FLAGS the CPU has, from /proc/cpuinfo; None where the system does not say."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return None
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in SPEED_FLAGS if flag in present]
    return None


def _gpu_names() -> str:
    """GPU names from nvidia-smi, comma-separated, or "none"."""
    if not shutil.which("nvidia-smi"):
        return "none"
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return ", ".join(names) if done.returncode == 0 and names else "none"
