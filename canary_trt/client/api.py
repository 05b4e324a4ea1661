"""Transcribe over gRPC with the `canary_qwen` ensemble of a canary-trt Triton server.

    from canary_trt.client import TranscriptionClient
    with TranscriptionClient("127.0.0.1:8001") as client:
        print(client.transcribe("speech.flac").text)

Audio may be a path, encoded bytes (wav/flac/ogg) or a numpy array with its sample rate; any rate and
channel count (downmixed, resampled to 16 kHz on the client). One request per clip; the server batches
concurrent requests. `AsyncTranscriptionClient` runs many at once with bounded concurrency.
Both expose the underlying tritonclient `InferenceServerClient` as `.triton` (metadata, statistics).

Retries (`RetryPolicy`): a request that failed because the server could not take it (gRPC UNAVAILABLE:
connection refused or reset, server shutting down, or Triton's overload rejections "Exceeds maximum queue
size" / "Request timeout expired"; RESOURCE_EXHAUSTED only with such an overload message) is sent again
after 0.5, 1, 2, 4 s (doubling, capped at 8 s), 5 attempts in all by default; then `RetriesExhausted`
is raised, naming the attempts and the last error. Anything else (INVALID_ARGUMENT: the request's own
fault, a client timeout, an unreadable file) is not retried: the server's error is raised as it came.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from ..audio import duration, load_audio

MODEL = "canary_qwen"

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
        return [min(self.initial * self.factor**n, self.max_delay) for n in range(self.attempts - 1)]

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


def _result(response, samples: np.ndarray, start: float) -> Transcription:
    text = response.as_numpy("TRANSCRIPT").reshape(-1)[0]
    return Transcription(
        text.decode("utf-8") if isinstance(text, bytes) else str(text),
        response.as_numpy("TOKEN_IDS").reshape(-1).tolist(),
        duration(samples),
        time.perf_counter() - start,
    )


class TranscriptionClient:
    def __init__(self, url: str = "127.0.0.1:8001", model: str = MODEL, timeout: float | None = None,
                 retry: RetryPolicy | None = None):  # fmt: skip
        import tritonclient.grpc as grpcclient

        self._module, self.model, self.timeout = grpcclient, model, timeout
        self.retry = retry or RetryPolicy()
        self.triton = grpcclient.InferenceServerClient(url)

    def transcribe(self, audio, sample_rate: int | None = None, prompt: str | None = None,
                   max_new_tokens: int | None = None) -> Transcription:  # fmt: skip
        samples = load_audio(audio, sample_rate)
        delays = self.retry.delays()
        for attempt in range(1, self.retry.attempts + 1):
            start = time.perf_counter()
            try:
                response = self.triton.infer(self.model, _inputs(self._module, samples, prompt, max_new_tokens),
                                             client_timeout=self.timeout)  # fmt: skip
                return _result(response, samples, start)
            except Exception as e:
                self.retry.give_up_unless_retryable(e, attempt)
            time.sleep(delays[attempt - 1])

    def close(self) -> None:
        self.triton.close()

    def __enter__(self) -> "TranscriptionClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncTranscriptionClient:
    """asyncio variant: at most `concurrency` requests in flight at once.

    Audio is decoded inside a request's slot, in a worker thread: at most `concurrency` clips are held
    decoded at once (plus those waiting out a retry pause), and decoding never stalls the replies of the
    requests in flight. A retry pause is spent outside the slot, so other requests go on meanwhile;
    `latency_seconds` is that of the attempt that succeeded.
    """

    def __init__(self, url: str = "127.0.0.1:8001", model: str = MODEL, concurrency: int = 8,
                 timeout: float | None = None, retry: RetryPolicy | None = None):  # fmt: skip
        import tritonclient.grpc.aio as grpcclient

        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._module, self.model, self.timeout = grpcclient, model, timeout
        self.retry = retry or RetryPolicy()
        self.triton = grpcclient.InferenceServerClient(url)
        self._slots = asyncio.Semaphore(concurrency)

    async def transcribe(self, audio, sample_rate: int | None = None, prompt: str | None = None,
                         max_new_tokens: int | None = None) -> Transcription:  # fmt: skip
        samples = None
        delays = self.retry.delays()
        for attempt in range(1, self.retry.attempts + 1):
            async with self._slots:
                if samples is None:
                    samples = await asyncio.to_thread(load_audio, audio, sample_rate)
                start = time.perf_counter()
                try:
                    response = await self.triton.infer(
                        self.model, _inputs(self._module, samples, prompt, max_new_tokens), client_timeout=self.timeout
                    )
                    return _result(response, samples, start)
                except Exception as e:
                    self.retry.give_up_unless_retryable(e, attempt)
            await asyncio.sleep(delays[attempt - 1])
        raise AssertionError("unreachable")

    async def transcribe_many(self, audios, return_exceptions: bool = False, **options) -> list:
        """Results in the order of `audios`. A failure raises the first exception, unless
        `return_exceptions`: then each failed clip's exception takes its place in the list."""
        return await asyncio.gather(*(self.transcribe(audio, **options) for audio in audios),
                                    return_exceptions=return_exceptions)  # fmt: skip

    async def close(self) -> None:
        await self.triton.close()

    async def __aenter__(self) -> "AsyncTranscriptionClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
