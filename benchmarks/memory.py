"""Resident memory of benchmarked processes: a Triton server's whole process group, or one process, sampled."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import psutil


def group_rss_bytes(pgid: int) -> tuple[int, int]:
    """(RSS summed over every process in process group `pgid`, how many processes): tritonserver and its
    python backend stubs, which `TritonServer` starts in a group of its own."""
    total = count = 0
    for process in psutil.process_iter(["memory_info"]):
        try:
            if os.getpgid(process.pid) != pgid:
                continue
        except OSError:
            continue  # the process ended meanwhile
        memory = process.info["memory_info"]  # None: unreadable (a zombie holds no memory)
        total += memory.rss if memory else 0
        count += 1
    return total, count


def process_rss_bytes(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


class MemorySampler(threading.Thread):
    """`measure()` every `every` seconds until `stop()`, which returns the largest value seen."""

    def __init__(self, measure: Callable[[], int], every: float = 0.2):
        super().__init__(daemon=True)
        self.measure, self.every, self.peak, self._stop_event = measure, every, 0, threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self.measure())
            self._stop_event.wait(self.every)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak
