"""`canary-trt gpu-check run DIR`: stage 2, in the GPU image. Versions first, then each stage in order;
the first that fails ends the check, named in the last line and in a non-zero exit status.

  versions -> stack (tensorrt, tensorrt_llm importable; a GPU; a tritonserver binary) -> engines stage
  -> tritonserver on DIR/gpu/model_repository -> encoder vs ONNX Runtime -> canary_qwen tokens vs ONNX Runtime

With `url`, only the comparisons run, against that server (either flavour).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ..contract import ENCODER_PLAN, MODEL_REPOSITORY, TRTLLM_ENGINE_DIR
from .checks import (ENCODER_MAX_ABS_FRACTION, ENCODER_MIN_COSINE, ENCODER_MIN_ROW_COSINE, Check, encoder_checks,
                     token_checks, token_policy)  # fmt: skip
from .prepare import CHECKPOINT_DIR, GPU_BUILD
from .references import References, read_references
from .triton_http import TritonHttp, TritonHttpError
from .versions import CONTAINER_TRITONSERVER, Versions, collect, tritonserver_binary

LOGS = "logs"
READY_TIMEOUT_S = 900.0  # the TensorRT-LLM engine and its KV cache take a while to load on a big card


def run(directory: str | Path, url: str | None = None, tritonserver: str | None = None, skip_engines: bool = False,
        exact: bool | None = None, ready_timeout: float = READY_TIMEOUT_S, log=print) -> int:  # fmt: skip
    references = read_references(directory)
    log("== versions")
    versions = collect(tritonserver=tritonserver)
    for line in versions.lines():
        log(line)
    if url:
        return finish(compare(url, references, exact, log), log)
    checks = stack_checks(versions, tritonserver)
    for check in checks:
        log(check.line())
    if not all(c.ok for c in checks):
        return finish(checks, log)
    checks.append(reuse_engines(references) if skip_engines else build_engines(references, log))
    log(checks[-1].line())
    if not checks[-1].ok:
        return finish(checks, log)
    return finish(checks + serve_and_compare(references, tritonserver, exact, ready_timeout, log), log)


def finish(checks: list[Check], log) -> int:
    failed = [c for c in checks if not c.ok]
    if failed:
        more = f" (and {len(failed) - 1} more failed)" if len(failed) > 1 else ""
        log(f"gpu-check: FAIL: {failed[0].message}{more}")
        return 1
    log(f"gpu-check: PASS ({len(checks)} checks)")
    return 0


def stack_checks(versions: Versions, tritonserver: str | None) -> list[Check]:
    """What the engines stage and the server need, in that order; stops at the first missing piece."""
    checks = []
    for module in ("tensorrt", "tensorrt_llm"):
        component = versions.get(module)
        checks.append(Check(module, component.version is not None, component.version or "",
                            f"not importable: {component.detail}"))  # fmt: skip
        if not checks[-1].ok:
            return checks
    gpu = versions.get("GPU")
    checks.append(Check("GPU", gpu.version is not None, gpu.version or "", gpu.detail))
    if not checks[-1].ok:
        return checks
    binary = tritonserver_binary(tritonserver, _path())
    where = f"--tritonserver {tritonserver} is not a file" if tritonserver else f"not on PATH nor {CONTAINER_TRITONSERVER}"
    checks.append(Check("tritonserver", binary is not None, binary or "", f"binary not found: {where}"))
    return checks


def _path() -> str:
    return os.environ.get("PATH", "")


def engine_command(references: References) -> list[str]:
    d = references.directory
    return [sys.executable, "-m", "canary_trt.cli", "export", "--checkpoint", str(d / CHECKPOINT_DIR), "--out",
            str(d / GPU_BUILD), "--target", "gpu", "--stage", "engines", "--preset", references.preset]  # fmt: skip


def build_engines(references: References, log) -> Check:
    """`canary-trt export --stage engines` in a child process, its output shown and kept in DIR/logs."""
    log_path = references.directory / LOGS / "engines.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = engine_command(references)
    log(f"== engines: {' '.join(command[1:])}")
    start, tail = time.perf_counter(), []
    with open(log_path, "w", encoding="utf-8") as keep:
        # unbuffered: the build's progress shows as it happens, not when a pipe buffer fills
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        for line in process.stdout:
            keep.write(line)
            log("    " + line.rstrip())
            tail = (tail + [line.strip()])[-40:]
        code = process.wait()
    seconds = time.perf_counter() - start
    if code == 0:
        return Check("engines stage", True, f"built in {seconds:.0f} s (log {log_path})")
    return Check("engines stage", False, f"exit code {code} after {seconds:.0f} s",
                 f"failed (exit code {code}): {_last_error(tail)} (log {log_path})")  # fmt: skip


def _last_error(lines: list[str]) -> str:
    """The most telling line of a failed build: its own `error:` line, else the last line of a traceback."""
    for line in reversed(lines):
        if "error" in line.lower() and line:
            return line
    return next((line for line in reversed(lines) if line), "no output")


def reuse_engines(references: References) -> Check:
    from ..export_info import read_export_info

    build = references.directory / GPU_BUILD
    manifest = read_export_info(build)
    engines = (manifest.get("encoder_engine", ENCODER_PLAN), manifest.get("llm_engine", TRTLLM_ENGINE_DIR))
    missing = [name for name in engines if not (build / name).exists()]
    if missing:
        return Check("engines stage", False, "--skip-engines",
                     f"{', '.join(missing)} not built in {build}: run without --skip-engines")  # fmt: skip
    return Check("engines stage", True, f"reusing the engines in {build} (--skip-engines)")


def serve_and_compare(references: References, tritonserver: str | None, exact: bool | None, ready_timeout: float,
                      log) -> list[Check]:  # fmt: skip
    from ..server import TritonServerError
    from .container_server import ContainerTritonServer

    binary = tritonserver_binary(tritonserver, _path())
    repository = references.directory / GPU_BUILD / MODEL_REPOSITORY
    log_path = references.directory / LOGS / "tritonserver.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log(f"== tritonserver {binary} --model-repository {repository} (log {log_path})")
    start = time.perf_counter()
    try:
        server = ContainerTritonServer(repository, binary, log_file=log_path)
        server.start(timeout=ready_timeout)
    except (TritonServerError, FileNotFoundError) as e:
        return [Check("server", False, f"after {time.perf_counter() - start:.0f} s", f"did not become ready: {e}")]
    try:
        ready = Check("server", True, f"ready in {time.perf_counter() - start:.0f} s at {server.http_url}")
        log(ready.line())
        return [ready, *compare(server.http_url, references, exact, log)]
    finally:
        server.stop()


def compare(url: str, references: References, exact: bool | None, log) -> list[Check]:
    """Every comparison against the server at `url` (its HTTP endpoint), printed group by group."""
    client = TritonHttp(url)
    try:
        metadata = client.server_metadata()
        if not client.ready():
            raise TritonHttpError(f"{client.url}/v2/health/ready does not answer 200 (models still loading or failed)")
        policy = token_policy(client, exact)
    except TritonHttpError as e:
        check = Check("server", False, url, str(e))
        log(check.line())
        return [check]
    log(f"== server {metadata.get('name', 'triton')} {metadata.get('version', '?')} at {client.url}")
    log(f"== encoder vs ONNX Runtime fp32 (cosine >= {ENCODER_MIN_COSINE}, worst row >= {ENCODER_MIN_ROW_COSINE}, "
        f"max abs diff <= {ENCODER_MAX_ABS_FRACTION:g} x largest |reference|)")  # fmt: skip
    checks = _logged(encoder_checks(client, references), log)
    log(f"== canary_qwen tokens vs ONNX Runtime fp32 ({references.max_new_tokens} new tokens at most); {policy.describe()}")
    return checks + _logged(token_checks(client, references, policy), log)


def _logged(checks: list[Check], log) -> list[Check]:
    for check in checks:
        log(check.line())
    return checks
