"""A `tritonserver` binary named by path (the NGC container's, with its own backends: tensorrt_plan,
tensorrtllm, python), with canary_trt.server's life cycle: free ports, 127.0.0.1, readiness, the server's
own error lines, a process group and /dev/shm regions cleaned up by stop()."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MissingFile
from ..server import _ERROR_LINE, TritonServer


class ContainerTritonServer(TritonServer):
    """`TritonServer` for a full Triton install: `binary` is launched as it is, with its default backend
    directory (canary_trt.server.TritonServer instead assembles the nvidia-pytriton bundle)."""

    def __init__(self, model_repository, binary: str | os.PathLike, **options):
        super().__init__(model_repository, **options)
        self.binary = Path(binary)
        if not self.binary.is_file():
            raise MissingFile(f"tritonserver binary {self.binary} not found")

    def _prepare(self, runtime_dir: Path) -> tuple[list[str], dict[str, str]]:
        command = [
            str(self.binary),
            f"--model-repository={self.model_repository}",
            "--model-control-mode=none",  # no load/unload API
            "--disable-auto-complete-config",  # the configs are complete; a guess could only differ
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]  # fmt: skip
        return command, {**os.environ, **self.extra_env}

    def errors(self, tail: int = 10) -> str:
        """As TritonServer.errors, but CUDA/NVML lines are kept: on a GPU they are the diagnosis."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        errors = [line for line in lines if _ERROR_LINE.search(line)]
        return "\n".join(errors or [line for line in lines if line.strip() and line[0] not in "|+"][-tail:])
