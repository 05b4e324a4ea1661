"""What this machine has: GPU and driver, CUDA, TensorRT, TensorRT-LLM, Triton, Python, and the tools the
GPU build and serving use. Nothing here raises: a missing piece is reported as missing (the report is
printed first so that a failure further on can be read against it)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("nvidia-smi", "trtexec", "trtllm-build", "tritonserver", "mpirun")
CONTAINER_TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")  # the NGC containers' location
IMPORT_TIMEOUT_S = 300  # importing tensorrt_llm initializes CUDA and MPI: tens of seconds is normal


@dataclass(frozen=True)
class Component:
    name: str
    version: str | None  # None: not found / not importable
    detail: str = ""  # where it was found, or why it is missing

    def line(self) -> str:
        return f"  {self.name:<13} {self.version or 'MISSING'}{'  (' + self.detail + ')' if self.detail else ''}"


@dataclass(frozen=True)
class Versions:
    components: list[Component]
    tools: dict[str, str | None]  # name -> path, None when not on PATH

    def get(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def lines(self) -> list[str]:
        found = [f"{name} {path}" if path else f"{name} MISSING" for name, path in self.tools.items()]
        return [c.line() for c in self.components] + [f"  {'tools':<13} " + "; ".join(found)]


def collect(env: dict[str, str] | None = None, tritonserver: str | None = None) -> Versions:
    env = dict(os.environ if env is None else env)
    path = env.get("PATH", "")
    tools = {name: shutil.which(name, path=path) for name in TOOLS}
    components = [
        Component("python", platform.python_version(), sys.executable),
        gpu(tools["nvidia-smi"]),
        Component("CUDA", env.get("CUDA_VERSION"), "" if env.get("CUDA_VERSION") else "CUDA_VERSION not set"),
        pinned(python_module("tensorrt", env)),
        pinned(python_module("tensorrt_llm", env)),
        triton(env, tritonserver_binary(tritonserver, path)),
    ]
    return Versions(components, tools)


def gpu(nvidia_smi: str | None) -> Component:
    """GPU name(s), driver, memory and compute capability, from nvidia-smi."""
    if nvidia_smi is None:
        return Component("GPU", None, "nvidia-smi not found: no NVIDIA driver visible (docker run --gpus all?)")
    query = "--query-gpu=name,driver_version,memory.total,compute_cap"
    done = _run([nvidia_smi, query, "--format=csv,noheader"], timeout=30)
    if done is None or done.returncode != 0 or not done.stdout.strip():
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] if done else ["timed out"]
        return Component("GPU", None, f"nvidia-smi failed: {' '.join(reason) or 'no output'}")
    cards = [", ".join(field.strip() for field in line.split(",")) for line in done.stdout.strip().splitlines()]
    return Component("GPU", "; ".join(cards), "name, driver, memory, compute capability")


def python_module(module: str, env: dict[str, str]) -> Component:
    """Imported for real, in a child process: finding the files is not enough (CUDA or MPI libraries
    can be missing), and a crash while importing must not take this process down."""
    code = f"import {module}; print({module}.__version__)"
    done = _run([sys.executable, "-c", code], timeout=IMPORT_TIMEOUT_S, env=env)
    if done is None:
        return Component(module, None, f"import timed out after {IMPORT_TIMEOUT_S} s")
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        return Component(module, lines[-1].strip(), "imported")
    errors = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return Component(module, None, errors[-1] if errors else f"exit code {done.returncode}")


def pinned(component: Component) -> Component:
    """Flag a version other than the one the GPU build was written for (a warning, not a failure)."""
    from ..export.presets import TENSORRT_LLM_VERSION, TENSORRT_VERSION, TRITON_CONTAINER

    pin = {"tensorrt": TENSORRT_VERSION, "tensorrt_llm": TENSORRT_LLM_VERSION}[component.name]
    if component.version is None or component.version == pin:
        return component
    return Component(component.name, component.version, f"NOT the pinned {pin} of {TRITON_CONTAINER}")


def tritonserver_binary(given: str | None, path: str) -> str | None:
    """--tritonserver, else `tritonserver` on PATH, else the NGC containers' location."""
    if given:
        return given if Path(given).is_file() else None
    found = shutil.which("tritonserver", path=path)
    return found or (str(CONTAINER_TRITONSERVER) if CONTAINER_TRITONSERVER.is_file() else None)


def triton(env: dict[str, str], binary: str | None) -> Component:
    """The NGC containers name their release in the environment (and in /opt/tritonserver/TRITON_VERSION);
    the running server's own /v2 metadata is reported again once it is up."""
    version = env.get("TRITON_SERVER_VERSION")
    version_file = Path("/opt/tritonserver/TRITON_VERSION")
    if version is None and version_file.is_file():
        version = version_file.read_text().strip() or None
    release = env.get("NVIDIA_TRITON_SERVER_VERSION")
    if version and release:
        version = f"{version} (container release {release})"
    where = f"tritonserver {binary}" if binary else "no tritonserver binary"
    return Component("triton", version, where)


def _run(command: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None
    except OSError as e:
        return subprocess.CompletedProcess(command, 127, "", str(e))
