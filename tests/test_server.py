"""The bundled tritonserver, started by canary_trt.server and `canary-trt serve`, on a tiny python-model repository.

Every test checks the clean-up by itself, from /proc and /dev/shm: no tritonserver or stub process and no
shared-memory region of the server may survive it.
"""

import ctypes.util
import ipaddress
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import canary_trt.server
from canary_trt.server import TritonServer, TritonServerError

pytestmark = pytest.mark.slow  # every test starts the bundled tritonserver

CONSOLE_SCRIPT = Path(sys.executable).parent / "canary-trt"

CONFIG = """\
backend: "python"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [-1] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [-1] }]
dynamic_batching {}
instance_group [{ kind: KIND_CPU count: 1 }]
"""

IDENTITY = """\
import numpy as np
import triton_python_backend_utils as pb_utils

import canary_trt.audio  # only this venv has it: proves the stub runs with the venv's packages


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", np.array(data, np.float32))]))
        return responses
"""

BROKEN = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("deliberately broken model: boom")
"""


def write_repo(root: Path, models: dict[str, str], configs: dict[str, str] | None = None) -> Path:
    for name, code in models.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text((configs or {}).get(name, CONFIG), encoding="utf-8")
        (root / name / "1" / "model.py").write_text(code, encoding="utf-8")
    return root


@pytest.fixture
def repo(tmp_path):
    return write_repo(tmp_path / "repo", {"identity": IDENTITY})


# --- what a server leaves behind, read from /proc and /dev/shm --------------------------------------------


def live_processes() -> dict[int, SimpleNamespace]:
    """pid -> comm, ppid, pgid of every non-zombie process."""
    processes = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        if rest[0] != "Z":
            processes[int(stat.parent.name)] = SimpleNamespace(comm=comm, ppid=int(rest[1]), pgid=int(rest[2]))
    return processes


def group(pgid: int) -> dict[int, str]:
    return {pid: p.comm for pid, p in live_processes().items() if p.pgid == pgid}


def shm_files(prefix: str) -> set[str]:
    return {path.name for path in Path("/dev/shm").glob(f"{prefix}*")}


def listening_on(port: int) -> set[str]:
    """Addresses of the sockets listening on a TCP port, from /proc/net (IPv4-mapped IPv6 as IPv4)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            hex_address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = b"".join(bytes.fromhex(hex_address[i : i + 8])[::-1] for i in range(0, len(hex_address), 8))
                address = ipaddress.ip_address(raw)
                found.add(str(getattr(address, "ipv4_mapped", None) or address))
    return found


def assert_running(server_pid: int, shm_prefix: str | None = None) -> None:
    members = group(server_pid)
    assert members.get(server_pid) == "tritonserver", members
    assert any(comm.startswith("triton_python") for comm in members.values()), f"no python stub in {members}"
    if shm_prefix:
        assert shm_files(shm_prefix), f"no /dev/shm/{shm_prefix}* while running"


def assert_gone(server_pid: int, shm_prefix: str = "canary_trt_", shm_before: set[str] = frozenset()) -> None:
    assert not group(server_pid), f"left running: {group(server_pid)}"
    assert shm_files(shm_prefix) <= shm_before, f"left in /dev/shm: {shm_files(shm_prefix) - shm_before}"


def infer(url: str, rows: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    try:
        data = grpcclient.InferInput("INPUT0", list(rows.shape), "FP32")
        data.set_data_from_numpy(rows)
        return client.infer("identity", [data]).as_numpy("OUTPUT0")
    finally:
        client.close()


ROWS = np.array([[1.5, -2.0, 3.25], [0.0, 7.0, -1.0]], np.float32)


# --- the TritonServer class -------------------------------------------------------------------------------


def test_start_infer_stop_leaves_nothing(repo):
    start = time.perf_counter()
    with TritonServer(repo) as server:
        print(f"cold start {time.perf_counter() - start:.2f} s")
        assert server.alive and server.poll() is None
        server.check()
        assert_running(server.pid, server.shm_prefix)
        np.testing.assert_array_equal(infer(server.grpc_url, ROWS), ROWS)
        for port in (server.grpc_port, server.http_port, server.metrics_port):
            assert listening_on(port) == {"127.0.0.1"}, f"port {port} must listen on 127.0.0.1 only"
        assert server.grpc_url.startswith("127.0.0.1:") and server.metrics_url.startswith("http://127.0.0.1:")
        runtime_dir = server.log_path.parent
        assert (runtime_dir / "backends" / "python" / "triton_python_backend_stub").exists()
    assert server.poll() == 0, "SIGTERM must be a graceful exit"
    assert_gone(server.pid, server.shm_prefix)
    assert not runtime_dir.exists()


def test_two_servers_side_by_side(repo):
    with TritonServer(repo) as a, TritonServer(repo) as b:
        ports_a = {a.grpc_port, a.http_port, a.metrics_port}
        ports_b = {b.grpc_port, b.http_port, b.metrics_port}
        assert len(ports_a | ports_b) == 6 and a.shm_prefix != b.shm_prefix
        for server in (a, b):
            assert_running(server.pid, server.shm_prefix)
            np.testing.assert_array_equal(infer(server.grpc_url, ROWS), ROWS)
        b.stop()
        assert_gone(b.pid, b.shm_prefix)
        assert_running(a.pid, a.shm_prefix)  # stopping one leaves the other alone
        np.testing.assert_array_equal(infer(a.grpc_url, ROWS[:1]), ROWS[:1])
    assert_gone(a.pid, a.shm_prefix)


@pytest.mark.parametrize(
    "model, config, message",
    [
        (BROKEN, CONFIG, "deliberately broken model: boom"),
        (IDENTITY, 'backend: "python"\nmax_batch_size: [oops', "failed to read text proto"),
    ],
    ids=["initialize-raises", "bad-config"],
)
def test_broken_model_fails_start_with_the_servers_error(tmp_path, model, config, message):
    broken_repo = write_repo(tmp_path / "repo", {"identity": IDENTITY, "broken": model}, {"broken": config})
    server = TritonServer(broken_repo)
    with pytest.raises(TritonServerError) as info:
        server.start(timeout=50)
    assert message in str(info.value) and "failed to load all models" in str(info.value)
    assert "CudaDriverHelper" not in str(info.value)  # CPU noise is not an error
    assert_gone(server.pid, server.shm_prefix)


def test_extra_args_reach_tritonserver(tmp_path):
    """--exit-on-error=false + --strict-readiness=false: the good model serves despite the broken one."""
    mixed = write_repo(tmp_path / "repo", {"identity": IDENTITY, "broken": BROKEN})
    with TritonServer(mixed, extra_args=["--exit-on-error=false", "--strict-readiness=false"]) as server:
        np.testing.assert_array_equal(infer(server.grpc_url, ROWS), ROWS)
        assert "deliberately broken model: boom" in server.errors()
    assert_gone(server.pid, server.shm_prefix)


def test_stub_that_cannot_load_fails_fast(repo, monkeypatch):
    """Without its libpython the stub never starts and Triton waits forever: start() must say why, quickly."""
    if ctypes.util.find_library("python3.8"):
        pytest.skip("this machine has libpython3.8")
    monkeypatch.setattr(canary_trt.server, "_python_version", lambda: "3.8")  # the wheel has a 3.8 stub
    server = TritonServer(repo)
    start = time.perf_counter()
    with pytest.raises(TritonServerError, match="libpython3.8") as info:
        server.start(timeout=50)
    assert "error while loading shared libraries" in str(info.value)
    assert time.perf_counter() - start < 30
    assert_gone(server.pid, server.shm_prefix)


def test_death_is_detected_and_cleaned_up(repo):
    server = TritonServer(repo).start()
    try:
        stubs = [pid for pid, comm in group(server.pid).items() if comm.startswith("triton_python")]
        server.check()
        os.kill(server.pid, signal.SIGKILL)
        assert server.wait(10) == -signal.SIGKILL
        assert not server.alive
        with pytest.raises(TritonServerError, match="died \\(killed by SIGKILL\\)"):
            server.check()
        assert shm_files(server.shm_prefix), "a killed server leaves its regions behind: stop() must remove them"
    finally:
        server.stop()
    assert stubs and not set(stubs) & set(live_processes())
    assert_gone(server.pid, server.shm_prefix)


# --- canary-trt serve ------------------------------------------------------------------------------------


def serve(repo: Path, *extra: str, sigint_ignored: bool = False) -> subprocess.Popen:
    """`canary-trt serve` on free ports; `sigint_ignored`: started as a shell without job control starts a
    background command, SIGINT ignored (inherited through exec)."""
    command = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "canary_trt.cli"]
    ports = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    return subprocess.Popen(
        [*command, "serve", "--model-repository", str(repo), *ports, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None,
    )  # fmt: skip


def read_banner(proc: subprocess.Popen, timeout: float = 50) -> dict[str, str]:
    """The ready line and the three endpoint lines, read off the CLI's stdout."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    banner, deadline = {}, time.monotonic() + timeout
    while "metrics" not in banner:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            pytest.fail(f"no endpoints printed within {timeout} s; stderr: {proc.communicate()[1]}")
        key, _, value = line.strip().partition(" ")
        banner[key] = value.strip()
    banner["pid"] = banner["tritonserver"].split("pid ")[1].split(",")[0]
    return banner


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    """Exit code and stderr. The timeout exceeds stop()'s own bound (40 s for Triton to exit on SIGTERM,
    then SIGKILL and up to 10 s for the group to go), so a slow Triton exit is not mistaken for a hang."""
    try:
        return proc.wait(timeout), proc.stderr.read()
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_serve_prints_endpoints_and_stops_cleanly(repo, stop_signal):
    shm_before = shm_files("canary_trt_")
    proc = serve(repo, sigint_ignored=stop_signal == signal.SIGINT)  # `kill -INT` must still stop it
    banner = read_banner(proc)
    server_pid = int(banner["pid"])
    assert banner["grpc"].startswith("127.0.0.1:")
    assert banner["http"].startswith("http://127.0.0.1:") and banner["metrics"].startswith("http://127.0.0.1:")
    np.testing.assert_array_equal(infer(banner["grpc"], ROWS), ROWS)
    assert listening_on(int(banner["metrics"].split(":")[2].split("/")[0])) == {"127.0.0.1"}
    assert_running(server_pid)
    proc.send_signal(stop_signal)
    code, stderr = finish(proc)
    assert code == 0, stderr
    assert_gone(server_pid, shm_before=shm_before)


def test_cli_serve_broken_model_exits_nonzero_with_the_servers_error(tmp_path):
    broken_repo = write_repo(tmp_path / "repo", {"broken": BROKEN})
    proc = serve(broken_repo)
    code, stderr = finish(proc)
    assert code == 1
    assert "canary-trt serve: error:" in stderr and "deliberately broken model: boom" in stderr


def test_cli_serve_exits_nonzero_when_the_server_dies(repo):
    shm_before = shm_files("canary_trt_")
    proc = serve(repo)
    server_pid = int(read_banner(proc)["pid"])
    os.kill(server_pid, signal.SIGKILL)
    code, stderr = finish(proc)
    assert code == 1
    assert "tritonserver died (killed by SIGKILL)" in stderr
    assert_gone(server_pid, shm_before=shm_before)
