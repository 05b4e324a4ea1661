"""`canary-trt api` as a child process, the way a user starts it: for the demo and the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from ..server import free_ports


class ApiProcess:
    """`with ApiProcess(triton_url, "--max-new-tokens", "32") as api: api.url` (http://127.0.0.1:PORT).

    Ready once it listens: its /health answers, 200 or 503 (whatever Triton's state, so a front before an
    unreachable Triton can be started too)."""

    def __init__(self, triton_url: str, *options: str, env: dict[str, str] | None = None):
        (self.port,) = free_ports("127.0.0.1", None)
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "canary_trt.cli", "api", "--triton-url", triton_url,
                        "--port", str(self.port), *options]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile("w+")  # not a pipe: nobody reads it while it runs, and a pipe fills

    def start(self, timeout: float = 60.0) -> ApiProcess:
        self.process = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL, stdout=self.log,
                                        stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"canary-trt api exited ({self.process.returncode}):\n{self.output()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"canary-trt api did not listen on {self.url} within {timeout:g} s")
            time.sleep(0.2)
        return self

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.url}/health", timeout=10).close()
        except urllib.error.HTTPError:
            return True  # 503: listening, Triton not ready
        except OSError:
            return False
        return True

    def output(self) -> str:
        """What it printed so far (uvicorn's log)."""
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # uvicorn shuts down cleanly on SIGTERM
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ApiProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
