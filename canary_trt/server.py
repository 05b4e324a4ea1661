"""Run the `tritonserver` bundled in the nvidia-pytriton wheel (python backend only) on a CPU model repository.

No Docker, no GPU: the binary is launched directly (recipe and pitfalls: docs/SERVING.md#bundled-tritonserver-cpu).
Every server gets its own runtime folder, shared-memory prefix and process group, so several can run side
by side and `stop()` leaves no process and no /dev/shm file behind.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from .errors import MissingFile

# A stub that cannot load (e.g. no system libpython3.x) hangs Triton forever, so start() watches for this.
_STUB_CANNOT_START = "error while loading shared libraries"
# Error lines: glog's E level, the final "error: ...", command-line complaints, the dynamic loader's.
_ERROR_LINE = re.compile(
    rf"^E\d{{4}} |^error:|unrecognized option|requires an argument|^Bad option|^invalid value|{_STUB_CANNOT_START}"
)
# CPU-only noise Triton logs at E/W level.
_CPU_NOISE = re.compile(r"CudaDriverHelper|CUDA|NVML|DCGM|pinned memory", re.IGNORECASE)


class TritonServerError(RuntimeError):
    """tritonserver failed to start, a model failed to load, or the server died."""


class TritonServer:
    """One `tritonserver` process: `with TritonServer(repo) as server: ...` or `start()` ... `stop()`.

    Ports left as None (or 0) are picked free: Triton itself refuses port 0. The python backend's stub
    finds this venv's packages because the venv's `bin` comes first on PATH (PYTHONPATH is ignored by
    the stub); a model can instead name another environment with its `EXECUTION_ENV_PATH` parameter.
    `log_file` receives tritonserver's and the stubs' output (overwritten); by default it lives in the
    runtime folder and is removed by `stop()`. `extra_args` are appended to the command line, e.g.
    `["--exit-on-error=false"]`.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike,
        host: str = "127.0.0.1",
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        log_file: str | os.PathLike | None = None,
        log_verbose: int = 0,
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] | list[str] = (),
    ):
        self.model_repository = Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise MissingFile(f"model repository {self.model_repository} is not a directory")
        self.host = host
        self.grpc_port, self.http_port, self.metrics_port = free_ports(host, grpc_port, http_port, metrics_port)
        self.log_verbose = log_verbose
        self.extra_env = dict(env or {})
        self.extra_args = list(extra_args)
        self.shm_prefix = f"canary_trt_{uuid.uuid4().hex[:12]}_"  # the backend appends a UUID per region
        self._log_file = Path(log_file).resolve() if log_file else None
        self.log_path: Path | None = None
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None
        self._runtime_dir: Path | None = None

    # --- endpoints -----------------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        """`host:port`, the form tritonclient.grpc expects."""
        return f"{_url_host(self.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.metrics_port}/metrics"

    # --- life cycle ----------------------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> TritonServer:
        """Launch and wait until every model is loaded and all three endpoints answer."""
        if self._proc is not None:
            raise RuntimeError("this TritonServer was already started; make a new one")
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="canary-trt-triton-"))
        try:
            command, env = self._prepare(self._runtime_dir)
            self.log_path = self._log_file or self._runtime_dir / "tritonserver.log"
            with open(self.log_path, "wb") as log:
                # Own session: Ctrl-C in a terminal reaches us only, and stop() can kill the stubs by group.
                self._proc = subprocess.Popen(
                    command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            self.pid = self._proc.pid
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def poll(self) -> int | None:
        """tritonserver's exit code (negative: killed by that signal), or None while it runs."""
        return self._proc.poll() if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def check(self) -> None:
        """Raise TritonServerError, with its exit status and error lines, if the server is not running."""
        code = self.poll()
        if self._proc is None or code is not None:
            status = "was never started" if self._proc is None else f"died ({_describe_exit(code)})"
            raise TritonServerError(f"tritonserver {status}:\n{self.errors()}".rstrip())

    def wait(self, timeout: float | None = None) -> int:
        """Block until tritonserver exits; returns its exit code."""
        if self._proc is None:
            raise RuntimeError("the server was never started")
        return self._proc.wait(timeout)

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM (Triton unloads its models, up to its own 30 s exit timeout), then SIGKILL the whole
        process group; remove this server's /dev/shm regions and runtime folder. Idempotent."""
        code = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            # Stubs outlive a crashed or hung server; the group id stays ours while any member lives.
            if _group_members(self._proc.pid):
                try:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            code = self._proc.wait()
            deadline = time.monotonic() + 10
            while _group_members(self._proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        # A server that dies (or fails to bind a port) leaves the python backend's regions behind.
        for path in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            path.unlink(missing_ok=True)
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
            self._runtime_dir = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- diagnostics ---------------------------------------------------------------------------------
    def errors(self, tail: int = 10) -> str:
        """The server's own error lines from its log (model load failures, bind errors, stub crashes);
        without any, its last `tail` lines that are not tables."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        errors = [line for line in lines if _ERROR_LINE.search(line) and not _CPU_NOISE.search(line)]
        return "\n".join(errors or [line for line in lines if line.strip() and line[0] not in "|+"][-tail:])

    # --- internals -----------------------------------------------------------------------------------
    def _prepare(self, runtime_dir: Path) -> tuple[list[str], dict[str, str]]:
        """Backend folder with the stub inside (the only place the python backend looks); command; env."""
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise MissingFile("nvidia-pytriton is not installed: it bundles tritonserver")
        bundle = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
        site_packages = bundle.parent.parent
        python = _python_version()
        stub = bundle / "python_backend_stubs" / python / "triton_python_backend_stub"
        if not stub.exists():
            raise MissingFile(f"nvidia-pytriton has no python backend stub for Python {python}: {stub}")
        backend = runtime_dir / "backends" / "python"
        shutil.copytree(bundle / "backends" / "python", backend, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, backend)
        (runtime_dir / "cache").mkdir()
        command = [
            str(bundle / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend.parent}",
            f"--cache-directory={runtime_dir / 'cache'}",
            "--model-control-mode=none",  # no load/unload API
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]  # fmt: skip
        env = dict(os.environ)
        # The copied stub loses its relative RPATH to the wheel's bundled libraries.
        env["LD_LIBRARY_PATH"] = _prepend(str(site_packages / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH"))
        if sysconfig.get_config_var("Py_ENABLE_SHARED"):
            # The stub must load THIS interpreter's libpython: the system one (e.g. Debian's 3.11.2 beside a
            # pyenv 3.11.7) mismatches this stdlib's extension modules (`_ssl`: undefined symbol).
            env["LD_LIBRARY_PATH"] = _prepend(sysconfig.get_config_var("LIBDIR"), env["LD_LIBRARY_PATH"])
        env["PATH"] = _prepend(os.path.dirname(sys.executable), env.get("PATH"))  # not resolved: the venv's own bin
        env.update(self.extra_env)
        return command, env

    def _wait_ready(self, timeout: float) -> None:
        """Triton loads every model before it opens its endpoints, so the first HTTP answer is final."""
        probe = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)  # a wildcard is no address to dial
        url = f"http://{_url_host(probe)}:{self.http_port}/v2/health/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                status = _describe_exit(code)
                raise TritonServerError(f"tritonserver exited during start-up ({status}):\n{self.errors()}")
            if _STUB_CANNOT_START in self.log_path.read_text(encoding="utf-8", errors="replace"):
                raise TritonServerError(
                    f"the python backend stub cannot start: install the system libpython{_python_version()} "
                    f"(Debian/Ubuntu package libpython{_python_version()}):\n{self.errors()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2):
                    pass
            except urllib.error.HTTPError:
                raise TritonServerError(
                    f"tritonserver is up but not ready (a model failed to load):\n{self.errors()}"
                ) from None
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
                continue
            if all(_accepts(probe, port) for port in (self.grpc_port, self.metrics_port)):
                return
            time.sleep(0.05)
        raise TritonServerError(f"tritonserver not ready after {timeout:.0f} s:\n{self.errors()}")


def free_ports(host: str, *wanted: int | None) -> list[int]:
    """Keep given ports; bind the others to port 0 all at once so the kernel hands out distinct free ones."""
    sockets = []
    try:
        ports = []
        for port in wanted:
            if not port:
                s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
                s.bind((host, 0))
                sockets.append(s)
                port = s.getsockname()[1]
            ports.append(port)
        return ports
    finally:
        for s in sockets:
            s.close()


def _prepend(first: str, path: str | None) -> str:
    return f"{first}{os.pathsep}{path}" if path else first


def _python_version() -> str:
    """The stub must match this interpreter: it embeds the system libpython of the same version."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    import psutil

    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                members.append(process.pid)
        except OSError:
            continue  # exited while we looked
    return members


def _describe_exit(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
