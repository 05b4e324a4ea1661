"""Several replicas behind one client: what the URLs stand for (DNS), the endpoints' health, and which one
each send goes to.

`url` may name several endpoints ("a:8001,b:8001" or a list), and a name that resolves to several addresses
of one family (a Kubernetes headless Service) stands for one endpoint per address, same port (names are
resolved again every 30 s: replicas come and go). Each request goes to the healthy endpoint with the fewest
requests in flight (ties in turn). An endpoint that fails a request as unreachable (UNAVAILABLE, not an
overload) is taken out for 0.5, 1, 2 ... s (the policy's pauses, per consecutive failure) and then gets one
probe request at a time until one succeeds. An overloaded endpoint stays in: it is alive, just busy. A
failed request is re-sent at once to an endpoint it has not failed on while one is available; otherwise
after the policy's next pause, to any endpoint. `attempts` counts sends per request across all endpoints.
With one endpoint this is plain retrying (`retry.py`).

DNS: the names are looked up when the pool is made, in the caller's thread. After that, `EndpointPool` (the
sync client) looks them up again inline, outside its lock, when a send picks its endpoint and the last
look-up is `resolve_every` s old; `AsyncEndpointPool` (the async client) does it in a worker thread, so the
event loop never waits on DNS: sends go on to the endpoints already known, and the answer is applied on the
loop when it comes.
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import InvalidInput
from .retry import RetryPolicy, is_overload, is_retryable

RESOLVE_EVERY = 30.0  # seconds between DNS look-ups of the endpoint names


def split_urls(urls) -> list[str]:
    """The endpoints named by "a:1,b:2" or ["a:1", "b:2,c:3"]: ["a:1", "b:2", "c:3"], in order, each once."""
    parts = [urls] if isinstance(urls, str) else list(urls)
    found = list(dict.fromkeys(u.strip() for part in parts for u in part.split(",") if u.strip()))
    if not found:
        raise InvalidInput(f"no server endpoint in {urls!r}")
    return found


def resolve(url: str) -> list[str] | None:
    """The endpoints `host:port` stands for: one per address when the name has several addresses of one
    family (the family with more; a dual-stack Service lists each replica once per family), else `[url]`
    as given (gRPC resolves it itself). None: the name cannot be resolved now. Blocking (DNS)."""
    host, _, port = url.rpartition(":")
    if not host or not port.isdigit():
        return [url]
    try:
        found = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):  # socket.gaierror is an OSError
        return None
    families: dict[int, dict[str, None]] = {}
    for family, _, _, _, address in found:
        families.setdefault(family, {})[address[0]] = None  # an ordered set
    addresses = max(families.values(), key=len, default={})
    if len(addresses) < 2:
        return [url]
    return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses]


def resolve_all(specs: list[str]) -> dict[str, list[str] | None]:
    """`resolve` of each spec. Blocking (DNS)."""
    return {spec: resolve(spec) for spec in specs}


@dataclass(eq=False)
class Endpoint:
    url: str
    triton: object  # its tritonclient InferenceServerClient (grpc or grpc.aio)
    in_flight: int = 0
    failures: int = 0  # consecutive take-outs; 0: healthy
    down_until: float = 0.0
    taken_out_at: float = -math.inf


class EndpointPool:
    """The endpoints behind one client and their health; the clients create each endpoint's tritonclient
    client with `connect(url)`. Thread-safe. Semantics: module doc. A due look-up of the names runs inline
    in the thread that picks an endpoint (blocking it, not the others); `AsyncEndpointPool` moves it off
    the event loop."""

    def __init__(self, urls, connect, retry: RetryPolicy, resolve_every: float = RESOLVE_EVERY,
                 clock=time.monotonic):  # fmt: skip
        self.specs = split_urls(urls)
        self.connect, self.retry, self.resolve_every, self.clock = connect, retry, resolve_every, clock
        self.endpoints: list[Endpoint] = []
        self.retired: list[Endpoint] = []  # no longer resolved; kept until close() for their clients
        self._expanded: dict[str, list[str]] = {}
        self._turn = 0
        self._lock = threading.Lock()
        self._looking_up = False
        self._next_resolve = self.clock() + self.resolve_every
        self.apply(resolve_all(self.specs))

    def _lookup_is_due(self) -> bool:
        """Claims a due look-up for the caller (at most one runs at a time)."""
        with self._lock:
            now = self.clock()
            if self._looking_up or now < self._next_resolve:
                return False
            self._looking_up, self._next_resolve = True, now + self.resolve_every
            return True

    def _look_up_if_due(self) -> None:
        """A due look-up, here and now (blocking this thread on DNS)."""
        if self._lookup_is_due():
            try:
                found = resolve_all(self.specs)
            finally:
                self._looking_up = False
            self.apply(found)

    def apply(self, found: dict[str, list[str] | None]) -> None:
        """Make the endpoints what the names stand for now (`resolve_all`'s answer): new ones connected,
        known ones kept with their health, vanished ones retired. A failed look-up (None) keeps what the name
        stood for before."""
        with self._lock:
            for spec in self.specs:
                self._expanded[spec] = found.get(spec) or self._expanded.get(spec, [spec])
            wanted = dict.fromkeys(url for spec in self.specs for url in self._expanded[spec])
            self.retired += [e for e in self.endpoints if e.url not in wanted]
            kept = [e for e in self.endpoints if e.url in wanted]
            known = {e.url for e in kept}
            self.endpoints = kept + [Endpoint(url, self.connect(url)) for url in wanted if url not in known]

    def _eligible(self, now: float) -> list[Endpoint]:
        """Healthy endpoints, and those back from a take-out with no probe in flight."""
        return [e for e in self.endpoints if now >= e.down_until and (e.failures == 0 or e.in_flight == 0)]

    def acquire(self, avoid=()) -> Endpoint:
        """The endpoint for the next send, counted in flight: the eligible one with the fewest in flight,
        preferring those not in `avoid`; with none eligible, the one back soonest."""
        self._look_up_if_due()
        with self._lock:
            now = self.clock()
            eligible = self._eligible(now)
            candidates = [e for e in eligible if e not in avoid] or eligible
            if candidates:
                self._turn += 1
                start = self._turn % len(candidates)  # ties: in turn
                endpoint = min(candidates[start:] + candidates[:start], key=lambda e: e.in_flight)
            else:
                endpoint = min(self.endpoints, key=lambda e: e.down_until)
            endpoint.in_flight += 1
            return endpoint

    def release(self, endpoint: Endpoint, sent: float, error: BaseException | None) -> None:
        """A send ended: answered (error None), or failed with `error`. Only unreachable takes the endpoint
        out, and only an answer brings it back; other errors (bad input, overload, timeouts) say neither."""
        with self._lock:
            endpoint.in_flight -= 1
            if error is None:
                endpoint.failures = 0
            elif is_retryable(error) and not is_overload(error) and sent >= endpoint.taken_out_at:
                # unreachable (a send older than the last take-out failed from that same outage: not counted)
                endpoint.failures += 1
                endpoint.taken_out_at = now = self.clock()
                endpoint.down_until = now + self.retry.delay(endpoint.failures)

    def available(self, avoid=()) -> bool:
        """Some eligible endpoint outside `avoid` could take a request now."""
        with self._lock:
            return any(e not in avoid for e in self._eligible(self.clock()))

    def clients(self) -> list:
        """Every tritonclient client made, to close."""
        return [e.triton for e in self.endpoints + self.retired]


class AsyncEndpointPool(EndpointPool):
    """The pool of the async client: `acquire` is called on the event loop, and a due look-up runs in a
    worker thread (`asyncio.to_thread`), its answer applied on the loop (where the grpc.aio clients of new
    endpoints must be made). `lookup`: the last look-up started (a task)."""

    def __init__(self, *args, **kwargs):
        self.lookup: asyncio.Task | None = None
        super().__init__(*args, **kwargs)

    def _look_up_if_due(self) -> None:
        """A due look-up, started: the send that found it due goes to the endpoints known now."""
        if self._lookup_is_due():
            self.lookup = asyncio.get_running_loop().create_task(self._look_up_in_a_thread())

    async def _look_up_in_a_thread(self) -> None:
        try:
            found = await asyncio.to_thread(resolve_all, self.specs)
        finally:
            self._looking_up = False
        self.apply(found)

    def cancel_lookup(self) -> None:
        """On close: a look-up still waiting on DNS is dropped (it would connect new endpoints)."""
        if self.lookup is not None:
            self.lookup.cancel()


class Dispatch:
    """One request's sends across the pool: at most `retry.attempts`, paused only when no endpoint it has
    not failed on is available (then its failures are forgotten: after a pause any endpoint may do)."""

    def __init__(self, pool: EndpointPool):
        self.pool, self.sends, self.pauses, self.failed_on = pool, 0, 0, set()

    @contextmanager
    def attempt(self):
        """The endpoint to send to; an exception out of the block is reported to the pool and re-raised."""
        endpoint, sent = self.pool.acquire(self.failed_on), self.pool.clock()
        self.sends += 1
        outcome = None
        try:
            yield endpoint
        except BaseException as error:  # cancellation too: it ends the send
            outcome = error
            self.failed_on.add(endpoint)
            raise
        finally:
            self.pool.release(endpoint, sent, outcome)

    def pause(self, error: Exception) -> float:
        """After a failed send: raise if it is not worth another (RetryPolicy); else seconds to wait first."""
        self.pool.retry.give_up_unless_retryable(error, self.sends)
        if self.pool.available(self.failed_on):
            return 0.0
        self.failed_on.clear()
        self.pauses += 1
        return self.pool.retry.delay(self.pauses)
