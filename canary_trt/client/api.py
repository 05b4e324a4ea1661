"""Transcribe over gRPC with the `canary_qwen` ensemble of a canary-trt Triton server.

    from canary_trt.client import TranscriptionClient
    with TranscriptionClient("127.0.0.1:8001") as client:
        print(client.transcribe("speech.flac").text)

Audio may be a path, encoded bytes (wav/flac/ogg) or a numpy array with its sample rate; any rate and
channel count (downmixed, resampled to 16 kHz on the client). One request per clip; the server batches
concurrent requests. `AsyncTranscriptionClient` runs many at once with bounded concurrency.
Both expose the underlying tritonclient `InferenceServerClient` as `.triton` (metadata, statistics), and
every endpoint's as `.endpoints[i].triton` when there are several (`.triton`: the first one's).

Retries (`RetryPolicy`): a request that failed because the server could not take it (gRPC UNAVAILABLE:
connection refused or reset, server shutting down, or Triton's overload rejections "Exceeds maximum queue
size" / "Request timeout expired"; RESOURCE_EXHAUSTED only with such an overload message) is sent again
after 0.5, 1, 2, 4 s (doubling, capped at 8 s), 5 attempts in all by default; then `RetriesExhausted`
is raised, naming the attempts and the last error. Anything else (INVALID_ARGUMENT: the request's own
fault, a client timeout, an unreadable file) is not retried: the server's error is raised as it came.

Several replicas (`EndpointPool`): `url` may name several endpoints ("a:8001,b:8001" or a list), and a
name that resolves to several addresses of one family (a Kubernetes headless Service) stands for one
endpoint per address, same port (names are resolved again every 30 s: replicas come and go). Each request
goes to the healthy endpoint with the fewest requests in flight (ties in turn). An endpoint that fails a
request as unreachable (UNAVAILABLE, not an overload) is taken out for 0.5, 1, 2 ... s (the policy's
pauses, per consecutive failure) and then gets one probe request at a time until one succeeds. An
overloaded endpoint stays in: it is alive, just busy. A failed request is re-sent at once to an endpoint
it has not failed on while one is available; otherwise after the policy's next pause, to any endpoint.
`attempts` counts sends per request across all endpoints. With one endpoint this is the behaviour above.
Each `Transcription` names the endpoint that answered.
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..audio import duration, load_audio

MODEL = "canary_qwen"
DEFAULT_URL = "127.0.0.1:8001"
RESOLVE_EVERY = 30.0  # seconds between DNS look-ups of the endpoint names

RETRYABLE_STATUSES = ("StatusCode.UNAVAILABLE",)  # server unreachable, restarting, shutting down or overloaded
OVERLOAD_STATUSES = ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED")
OVERLOAD_MESSAGES = ("exceeds maximum queue size", "request timeout expired", "overload", "queue is full")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: attempt n (1-based) that failed retryably is followed by a pause of
    `initial * factor**(n-1)` seconds, capped at `max_delay`, until `attempts` have been made."""

    attempts: int = 5
    initial: float = 0.5
    factor: float = 2.0
    max_delay: float = 8.0

    def __post_init__(self):
        if self.attempts < 1 or self.initial < 0 or self.factor < 1 or self.max_delay < 0:
            raise ValueError(f"invalid retry policy {self}")

    def delays(self) -> list[float]:
        """The pauses between attempts: attempts - 1 of them."""
        return [self.delay(n) for n in range(1, self.attempts)]

    def delay(self, n: int) -> float:
        """The n-th pause (1-based)."""
        return min(self.initial * self.factor ** (n - 1), self.max_delay)

    def give_up_unless_retryable(self, error: Exception, attempt: int) -> None:
        """After failed attempt `attempt`: raise `error` itself if retrying cannot help (e.g. bad input),
        RetriesExhausted after the last attempt; return to retry."""
        if not is_retryable(error):
            raise error
        if attempt >= self.attempts:
            raise RetriesExhausted(attempt, error) from error


NO_RETRY = RetryPolicy(attempts=1)


def status_of(error: BaseException) -> str | None:
    """The gRPC status of a tritonclient error, e.g. "StatusCode.UNAVAILABLE"; None for other errors."""
    status = getattr(error, "status", None)
    return status() if callable(status) else None


def is_overload(error: BaseException) -> bool:
    """Triton refused the request for lack of room (queue full, or it waited in the queue too long)."""
    message = str(error).lower()
    return status_of(error) in OVERLOAD_STATUSES and any(m in message for m in OVERLOAD_MESSAGES)


def is_retryable(error: BaseException) -> bool:
    """Worth sending again: the server was unreachable/unavailable or explicitly overloaded. Not: bad input
    (INVALID_ARGUMENT), internal errors, client-side deadlines (DEADLINE_EXCEEDED), cancellations, audio errors."""
    return status_of(error) in RETRYABLE_STATUSES or is_overload(error)


class RetriesExhausted(Exception):
    """A retryable error persisted through every attempt; `.last` is the final one."""

    def __init__(self, attempts: int, last: BaseException):
        self.attempts, self.last, self.overload = attempts, last, is_overload(last)
        kind = "overloaded" if self.overload else "unavailable"
        super().__init__(f"server {kind}, gave up after {attempts} attempt(s): {last}")


@dataclass
class Transcription:
    text: str
    token_ids: list[int]
    audio_seconds: float
    latency_seconds: float  # request sent -> response received
    endpoint: str | None = None  # the server that answered, host:port


def _inputs(module, samples: np.ndarray, prompt: str | None, max_new_tokens: int | None) -> list:
    tensors = [("WAV", samples[None], "FP32"), ("WAV_LENS", np.array([[len(samples)]], dtype=np.int32), "INT32")]
    if prompt is not None:
        tensors.append(("PROMPT", np.array([[prompt.encode("utf-8")]], dtype=object), "BYTES"))
    if max_new_tokens is not None:
        tensors.append(("MAX_NEW_TOKENS", np.array([[max_new_tokens]], dtype=np.int32), "INT32"))
    inputs = []
    for name, value, dtype in tensors:
        tensor = module.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def _result(response, samples: np.ndarray, start: float, endpoint: str) -> Transcription:
    text = response.as_numpy("TRANSCRIPT").reshape(-1)[0]
    return Transcription(
        text.decode("utf-8") if isinstance(text, bytes) else str(text),
        response.as_numpy("TOKEN_IDS").reshape(-1).tolist(),
        duration(samples),
        time.perf_counter() - start,
        endpoint,
    )


# --- several endpoints ---------------------------------------------------------------------------------


def split_urls(urls) -> list[str]:
    """The endpoints named by "a:1,b:2" or ["a:1", "b:2,c:3"]: ["a:1", "b:2", "c:3"], in order, each once."""
    parts = [urls] if isinstance(urls, str) else list(urls)
    found = list(dict.fromkeys(u.strip() for part in parts for u in part.split(",") if u.strip()))
    if not found:
        raise ValueError(f"no server endpoint in {urls!r}")
    return found


def resolve(url: str) -> list[str] | None:
    """The endpoints `host:port` stands for: one per address when the name has several addresses of one
    family (the family with more; a dual-stack Service lists each replica once per family), else `[url]`
    as given (gRPC resolves it itself). None: the name cannot be resolved now."""
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


@dataclass(eq=False)
class Endpoint:
    url: str
    triton: object  # its tritonclient InferenceServerClient (grpc or grpc.aio)
    in_flight: int = 0
    failures: int = 0  # consecutive take-outs; 0: healthy
    down_until: float = 0.0
    taken_out_at: float = -math.inf


class EndpointPool:
    """The endpoints behind one client and their health; shared by the sync and async clients, which
    create each endpoint's tritonclient client with `connect(url)`. Thread-safe. Semantics: module doc.
    Names are looked up again inline when a send picks its endpoint (blocking, at most every `resolve_every` s)."""

    def __init__(self, urls, connect, retry: RetryPolicy, resolve_every: float = RESOLVE_EVERY,
                 clock=time.monotonic):  # fmt: skip
        self.specs = split_urls(urls)
        self.connect, self.retry, self.resolve_every, self.clock = connect, retry, resolve_every, clock
        self.endpoints: list[Endpoint] = []
        self.retired: list[Endpoint] = []  # no longer resolved; kept until close() for their clients
        self._expanded: dict[str, list[str]] = {}
        self._turn = 0
        self._lock = threading.Lock()
        self._refresh()

    def _refresh(self) -> None:
        self._next_resolve = self.clock() + self.resolve_every
        for spec in self.specs:  # a failed look-up keeps what the name stood for before
            self._expanded[spec] = resolve(spec) or self._expanded.get(spec, [spec])
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
        with self._lock:
            now = self.clock()
            if now >= self._next_resolve:
                self._refresh()
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


class TranscriptionClient:
    def __init__(self, url: str | list[str] = DEFAULT_URL, model: str = MODEL, timeout: float | None = None,
                 retry: RetryPolicy | None = None):  # fmt: skip
        import tritonclient.grpc as grpcclient

        self._module, self.model, self.timeout = grpcclient, model, timeout
        self.retry = retry or RetryPolicy()
        self.pool = EndpointPool(url, grpcclient.InferenceServerClient, self.retry)

    @property
    def triton(self):
        """The first endpoint's tritonclient client (metadata, statistics)."""
        return self.pool.endpoints[0].triton

    @property
    def endpoints(self) -> list[Endpoint]:
        return self.pool.endpoints

    def transcribe(self, audio, sample_rate: int | None = None, prompt: str | None = None,
                   max_new_tokens: int | None = None) -> Transcription:  # fmt: skip
        samples = load_audio(audio, sample_rate)
        dispatch = Dispatch(self.pool)
        while True:
            start = time.perf_counter()
            try:
                with dispatch.attempt() as endpoint:
                    response = endpoint.triton.infer(self.model, _inputs(self._module, samples, prompt, max_new_tokens),
                                                     client_timeout=self.timeout)  # fmt: skip
                return _result(response, samples, start, endpoint.url)
            except Exception as e:
                time.sleep(dispatch.pause(e))

    def close(self) -> None:
        for triton in self.pool.clients():
            triton.close()

    def __enter__(self) -> "TranscriptionClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncTranscriptionClient:
    """asyncio variant: at most `concurrency` requests in flight at once.

    Audio is decoded inside a request's slot, in a worker thread: at most `concurrency` clips are held
    decoded at once (plus those waiting out a retry pause), and decoding never stalls the replies of the
    requests in flight. A retry pause is spent outside the slot, so other requests go on meanwhile (a
    re-send to another endpoint waits for a slot, not a pause); `latency_seconds` is that of the attempt
    that succeeded.
    """

    def __init__(self, url: str | list[str] = DEFAULT_URL, model: str = MODEL, concurrency: int = 8,
                 timeout: float | None = None, retry: RetryPolicy | None = None):  # fmt: skip
        import tritonclient.grpc.aio as grpcclient

        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._module, self.model, self.timeout = grpcclient, model, timeout
        self.retry = retry or RetryPolicy()
        self.pool = EndpointPool(url, grpcclient.InferenceServerClient, self.retry)
        self._slots = asyncio.Semaphore(concurrency)

    triton = TranscriptionClient.triton
    endpoints = TranscriptionClient.endpoints

    async def transcribe(self, audio, sample_rate: int | None = None, prompt: str | None = None,
                         max_new_tokens: int | None = None) -> Transcription:  # fmt: skip
        samples = None
        dispatch = Dispatch(self.pool)
        while True:
            async with self._slots:
                if samples is None:
                    samples = await asyncio.to_thread(load_audio, audio, sample_rate)
                start = time.perf_counter()
                try:
                    with dispatch.attempt() as endpoint:
                        response = await endpoint.triton.infer(
                            self.model, _inputs(self._module, samples, prompt, max_new_tokens),
                            client_timeout=self.timeout,
                        )
                    return _result(response, samples, start, endpoint.url)
                except Exception as e:
                    pause = dispatch.pause(e)
            await asyncio.sleep(pause)  # outside the slot; 0: another endpoint takes it at once

    async def transcribe_many(self, audios, return_exceptions: bool = False, **options) -> list:
        """Results in the order of `audios`. A failure raises the first exception, unless
        `return_exceptions`: then each failed clip's exception takes its place in the list."""
        return await asyncio.gather(*(self.transcribe(audio, **options) for audio in audios),
                                    return_exceptions=return_exceptions)  # fmt: skip

    async def close(self) -> None:
        for triton in self.pool.clients():
            await triton.close()

    async def __aenter__(self) -> "AsyncTranscriptionClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
