"""In-flight (continuous) batching over one DecodeBatch: a thread decodes step after step, and requests
submitted meanwhile join the running batch at the next step boundary instead of waiting for it to finish.

Bounded: at most `max_rows` rows decode together and at most `max_rows` more wait to join; submit() blocks
while the waiting room is full, so that the caller's own bounded queue (Triton's queue policy) holds the rest
and rejects what is over it by name. Every submitted request ends in exactly one of its sink's done() or
fail(): a failed step fails the rows it was decoding, and close() fails what is still waiting or running.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol

from .decoding import DecodeBatch, GreedyDecoder, Request


class Sink(Protocol):
    """Where one submitted request's rows report: new tokens as they come, then done() once per row, or
    fail() once for the whole request."""

    def token(self, row: int, token: int) -> None: ...
    def done(self, row: int, ids: list[int]) -> None: ...
    def fail(self, error: BaseException) -> None: ...


class ShuttingDown(RuntimeError):
    """The batcher was closed before this request finished."""


class InflightBatcher:
    def __init__(self, decoder: GreedyDecoder, max_rows: int, on_sink_error=None):
        """on_sink_error(exc): a sink's own callback raised (e.g. its client went away); decoding goes on."""
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, not {max_rows}")
        self.max_rows, self.on_sink_error = max_rows, on_sink_error
        self.batch = DecodeBatch(decoder)
        self._waiting: deque[tuple[list[Request], Sink]] = deque()
        self._sinks: dict[int, Sink] = {}  # id(sink) -> sink, for every sink with rows in the batch
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="inflight-decoder", daemon=True)
        self._thread.start()

    def submit(self, requests: list[Request], sink: Sink) -> None:
        """Queue one request's rows (they join together); blocks while max_rows rows are already waiting."""
        if not 1 <= len(requests) <= self.max_rows:
            raise ValueError(f"{len(requests)} rows in one request: between 1 and max_rows {self.max_rows}")
        with self._changed:
            while not self._closed and self._waiting_rows() + len(requests) > self.max_rows:
                self._changed.wait()
            if self._closed:
                raise ShuttingDown("the decoder is shutting down")
            self._waiting.append((requests, sink))
            self._changed.notify_all()

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the current step; every request still waiting or decoding fails with ShuttingDown."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout)

    def _waiting_rows(self) -> int:
        return sum(len(requests) for requests, _ in self._waiting)

    def _loop(self) -> None:
        while True:
            with self._changed:
                while not self._closed and not self._waiting and not self.batch:
                    self._changed.wait()
                if self._closed:
                    break
                joining = self._admit()
                self._changed.notify_all()  # room in the waiting line
            if joining:
                self._join(joining)
            if self.batch:
                self._step()
        stopping = ShuttingDown("the decoder shut down before this request finished")
        for sink in [*self._sinks.values(), *(sink for _, sink in self._waiting)]:
            self._call(sink.fail, stopping)

    def _admit(self) -> list[tuple[Sink, list[Request]]]:
        """Whole waiting requests, in order, as long as their rows fit beside the running ones."""
        joining, room = [], self.max_rows - len(self.batch)
        while self._waiting and len(self._waiting[0][0]) <= room:
            requests, sink = self._waiting.popleft()
            joining.append((sink, requests))
            room -= len(requests)
        return joining

    def _join(self, joining: list[tuple[Sink, list[Request]]]) -> None:
        """Prefill the joining requests into the batch; if that fails, they fail and the batch is unchanged."""
        self._sinks.update({id(sink): sink for sink, _ in joining})
        try:
            new, ended = self.batch.join({(id(sink), row): r for sink, rows in joining for row, r in enumerate(rows)})
        except Exception as e:
            self._fail([sink for sink, _ in joining], e)
            return
        self._deliver(new, ended)

    def _step(self) -> None:
        """One token for every running row; if that fails, every running request fails and the batch empties."""
        try:
            new, ended = self.batch.step()
        except Exception as e:
            self._fail(list(self._sinks.values()), e)
            self.batch = DecodeBatch(self.batch.decoder)
            return
        self._deliver(new, ended)

    def _deliver(self, new: dict, ended: dict) -> None:
        for (sink_id, row), token in new.items():
            self._call(self._sinks[sink_id].token, row, token)
        for (sink_id, row), ids in ended.items():
            self._call(self._sinks[sink_id].done, row, ids)
        running = {sink_id for sink_id, _ in self.batch.keys}
        for sink_id in [s for s in self._sinks if s not in running]:
            del self._sinks[sink_id]

    def _fail(self, sinks: list[Sink], error: BaseException) -> None:
        for sink in sinks:
            self._sinks.pop(id(sink), None)
            self._call(sink.fail, error)

    def _call(self, callback, *args) -> None:
        try:
            callback(*args)
        except Exception as e:
            if self.on_sink_error:
                self.on_sink_error(e)
