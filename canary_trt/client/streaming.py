"""Live transcription over gRPC: audio chunks to `canary_qwen_stream`, interim and final segments back.

    with TranscriptionClient("127.0.0.1:8001") as client:
        for segment in client.stream(paced(chunked(samples, 100)), interim_interval_ms=1000):
            print("final" if segment.is_final else "interim", segment.start_s, segment.end_s, segment.text)

One stream is one Triton sequence (the server side: canary_trt/serving/streaming.py): a random correlation
id, the chunks (float32, 16 kHz mono, any length) as requests in order over one gRPC bidirectional stream,
START on the first, END on one more request with no samples once the chunks run out. Every request asks for
Triton's empty final response, so the client knows when each has been answered: the stream is done when
every request is (the END request once the server has flushed the open utterance). Each request is answered
with the segments the server decided during it: interims (`is_final` False: the open utterance's hypothesis
so far, every `interim_interval_ms` of new audio in it; None or 0: none) and finals (in time order, never
overlapping).

Backpressure: at most `MAX_UNANSWERED` requests are in flight; a faster source (a file sent unpaced) waits
for answers, so the audio the server holds stays bounded (its max_buffered_seconds). While it waits, an empty
request every `KEEPALIVE_S` keeps the stream from being freed as idle (answers can wait on long decodes). A refusal (the message
starts with contract.STREAM_REFUSAL: bad audio or options, too many streams, ...) is raised as an
INVALID_ARGUMENT InferenceServerException (retry.classify: invalid input), as is Triton's refusal of a request
on a sequence it no longer holds (the stream idle past stream_idle_s), any other failure as it came. The first
error ends the client's stream; a stream is not retried (it holds server state). A consumer that stops
iterating cancels the gRPC stream; the server frees the stream's state at once if a request of it was still
being answered, else after its stream_idle_s.
"""

from __future__ import annotations

import asyncio
import queue
import random
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..contract import (INPUT_INTERIM_INTERVAL_MS, INPUT_PROMPT, INPUT_WAV, OUTPUT_IS_FINAL, OUTPUT_SEGMENT_END_MS,
                        OUTPUT_SEGMENT_START_MS, OUTPUT_SEGMENT_TEXT, OUTPUT_SEGMENT_TOKEN_IDS,
                        OUTPUT_SEGMENT_TRUNCATED, SAMPLE_RATE, STREAM_MODEL)  # fmt: skip
from ..errors import InvalidInput
from .chat import with_status
from .tensors import Segment, infer_inputs

__all__ = ["STREAM_MODEL", "StreamSegment", "chunked", "paced", "paced_async"]

MAX_UNANSWERED = 8  # requests in flight per stream: 8 chunks ahead of the server's answers at most
# While that window is full (the server is behind: a stream's answers wait for its decodes), an empty request
# every KEEPALIVE_S keeps Triton's sequence idle timer and the model's stream_idle_s (default 30) from freeing a
# live stream that has simply stopped sending; it carries no audio, so the bound on what the server holds stays.
KEEPALIVE_S = 5.0
KEEPALIVE_ID = "keepalive"  # its request id (the chunks' are their numbers)
FINAL_FLAG = "triton_final_response"  # the response parameter Triton sets on a request's last response
# Triton's own refusal of a request on a sequence it does not hold (never started, ended, or reaped after its
# idle time), which never reaches the model and so lacks contract.STREAM_REFUSAL (core r24.10, bfec7c61,
# src/sequence_batch_scheduler/sequence_batch_scheduler.cc, SequenceBatchScheduler::Enqueue).
UNKNOWN_SEQUENCE = "must specify the START flag on the first request of the sequence"


@dataclass
class StreamSegment(Segment):
    """A segment of the stream (times from its first sample): final, or the open utterance's interim."""

    is_final: bool = True


@dataclass(frozen=True)
class StreamOptions:
    interim_interval_ms: int | None = None  # None or 0: no interims
    prompt: str | None = None  # None: the server's default instruction

    def start_tensors(self) -> list[tuple[str, np.ndarray, str]]:
        """What the START request carries besides the audio."""
        tensors = []
        if self.interim_interval_ms:
            tensors.append((INPUT_INTERIM_INTERVAL_MS, np.array([[self.interim_interval_ms]], dtype=np.int32), "INT32"))
        if self.prompt is not None:
            tensors.append((INPUT_PROMPT, np.array([[self.prompt.encode("utf-8")]], dtype=object), "BYTES"))
        return tensors


def new_sequence_id() -> int:
    """A random correlation id: nonzero (0 means no sequence), under 2**63 (tritonclient sends it as int64)."""
    return random.SystemRandom().randrange(1, 2**63)


def _samples(chunk, number: int) -> np.ndarray:
    samples = np.ascontiguousarray(chunk, dtype=np.float32)
    if samples.ndim != 1:
        raise InvalidInput(f"stream chunk {number}: expected a 1-D array of 16 kHz mono samples, got shape "
                           f"{samples.shape}")  # fmt: skip
    return samples


def _request(module, samples: np.ndarray, number: int, sequence_id: int, end: bool, options: StreamOptions) -> dict:
    """One request as async_stream_infer's keyword arguments (request_id: its number in the stream)."""
    tensors = [(INPUT_WAV, samples[None], "FP32"), *(options.start_tensors() if number == 0 else [])]
    return {"inputs": infer_inputs(module, tensors), "request_id": str(number), "sequence_id": sequence_id,
            "sequence_start": number == 0, "sequence_end": end}  # fmt: skip


def _keepalive(kwargs: dict) -> dict:
    """An empty request on the stream of `kwargs` (a request already sent): no samples, no START or END."""
    import tritonclient.grpc as grpcclient  # the aio client takes the same InferInput

    return {"inputs": infer_inputs(grpcclient, [(INPUT_WAV, np.zeros((1, 0), np.float32), "FP32")]),
            "request_id": KEEPALIVE_ID, "sequence_id": kwargs["sequence_id"], "sequence_start": False,
            "sequence_end": False}  # fmt: skip


def requests_of(module, chunks: Iterable, sequence_id: int, options: StreamOptions) -> Iterator[dict]:
    """The stream's requests: one per chunk, then the END request without samples."""
    number = 0
    for chunk in chunks:
        yield _request(module, _samples(chunk, number), number, sequence_id, False, options)
        number += 1
    yield _request(module, np.zeros(0, np.float32), number, sequence_id, True, options)


async def requests_of_async(module, chunks: AsyncIterable, sequence_id: int,
                            options: StreamOptions) -> AsyncIterator[dict]:  # fmt: skip
    number = 0
    async for chunk in chunks:
        yield _request(module, _samples(chunk, number), number, sequence_id, False, options)
        number += 1
    yield _request(module, np.zeros(0, np.float32), number, sequence_id, True, options)


def refusal_status(error):
    """A stream's error with the status its kind has (chat.with_status): the model's refusals, and Triton's
    own of a request on a sequence it does not hold, are INVALID_ARGUMENT (retry.classify: invalid input)."""
    from tritonclient.utils import InferenceServerException

    error = with_status(error)
    if getattr(error, "status", lambda: None)() is None and UNKNOWN_SEQUENCE in str(error):
        return InferenceServerException(error.message(), status="StatusCode.INVALID_ARGUMENT")
    return error


def read_segment(result) -> StreamSegment | None:
    """A response's segment; None for an empty (final-flag only) response."""
    if result.as_numpy(OUTPUT_IS_FINAL) is None:
        return None

    def first(name):
        return result.as_numpy(name).reshape(-1)[0]

    text = first(OUTPUT_SEGMENT_TEXT)
    return StreamSegment(int(first(OUTPUT_SEGMENT_START_MS)) / 1000, int(first(OUTPUT_SEGMENT_END_MS)) / 1000,
                         text.decode("utf-8") if isinstance(text, bytes) else str(text),
                         result.as_numpy(OUTPUT_SEGMENT_TOKEN_IDS).reshape(-1).tolist(),
                         bool(first(OUTPUT_SEGMENT_TRUNCATED)), bool(first(OUTPUT_IS_FINAL)))  # fmt: skip


def is_last_response(result) -> bool:
    """The request's final flag (asked for with enable_empty_final_response)."""
    parameters = result.get_response().parameters
    return FINAL_FLAG in parameters and parameters[FINAL_FLAG].bool_param


class _Tally:
    """Requests sent and answered: the stream is done when the sender is through and all are answered."""

    def __init__(self):
        self.sent, self.answered, self.through = 0, 0, False

    @property
    def done(self) -> bool:
        return self.through and self.answered == self.sent

    def take(self, result, window) -> StreamSegment | None:
        """A response: its segment (None for an empty one); a request's last response counts it answered and
        frees its place in `window` (a threading or asyncio semaphore; a keep-alive took none)."""
        if is_last_response(result):
            self.answered += 1
            if result.get_response().id != KEEPALIVE_ID:
                window.release()
        return read_segment(result)


def segments_sync(triton, model: str, requests: Iterator[dict], timeout: float | None) -> Iterator[StreamSegment]:
    """The stream on a tritonclient.grpc client (one stream per client at a time: callers lock). The requests
    are sent from a thread of their own, so a source that blocks (a microphone) never holds up the answers."""
    replies: queue.Queue = queue.Queue()  # ("reply", (result, error)) | ("through", None) | ("failed", error)
    window, stopped, tally = threading.Semaphore(MAX_UNANSWERED), threading.Event(), _Tally()

    def send():
        try:
            for kwargs in requests:
                waited = 0.0
                while not window.acquire(timeout=0.1):
                    if stopped.is_set():
                        return
                    waited += 0.1
                    if waited >= KEEPALIVE_S:  # the window is full: the first request (START) has been sent
                        triton.async_stream_infer(model, enable_empty_final_response=True, **_keepalive(kwargs))
                        tally.sent, waited = tally.sent + 1, 0.0
                if stopped.is_set():
                    return
                triton.async_stream_infer(model, enable_empty_final_response=True, **kwargs)
                tally.sent += 1
            replies.put(("through", None))
        except Exception as e:  # the source's own error (or a bad chunk), raised to the consumer
            if not stopped.is_set():
                replies.put(("failed", e))

    triton.start_stream(callback=lambda result, error: replies.put(("reply", (result, error))), stream_timeout=timeout)
    sender = threading.Thread(target=send, name="canary-trt-stream-sender", daemon=True)
    try:
        sender.start()
        while not tally.done:
            kind, value = replies.get()
            if kind == "failed":
                raise value
            if kind == "through":
                tally.through = True
                continue
            result, error = value
            if error is not None:
                raise refusal_status(error)
            segment = tally.take(result, window)
            if segment is not None:
                yield segment
    finally:
        stopped.set()
        triton.stop_stream(cancel_requests=True)  # a consumer that stopped early ends the gRPC stream


async def segments_async(triton, model: str, requests: AsyncIterator[dict],
                         timeout: float | None) -> AsyncIterator[StreamSegment]:  # fmt: skip
    """The stream on a tritonclient.grpc.aio client. Its public stream_infer cannot ask for the empty final
    responses (tritonclient 2.73 grpc/_utils.py `_get_inference_request` refuses "triton_"-prefixed
    parameters; only the sync async_stream_infer sets triton_enable_empty_final_response, grpc/_client.py),
    so the requests are built as that method builds them and sent on the client's own stub."""
    import grpc
    from tritonclient.grpc import InferResult
    from tritonclient.grpc._utils import _get_inference_request, get_error_grpc
    from tritonclient.utils import InferenceServerException

    window, tally, failure = asyncio.Semaphore(MAX_UNANSWERED), _Tally(), []

    def message_of(kwargs: dict):
        message = _get_inference_request(model_name=model, model_version="", outputs=None, priority=0, timeout=None,
                                         parameters=None, **kwargs)  # fmt: skip
        message.parameters["triton_enable_empty_final_response"].bool_param = True
        return message

    async def messages():
        try:
            async for kwargs in requests:
                while True:
                    try:
                        await asyncio.wait_for(window.acquire(), KEEPALIVE_S)
                        break
                    except asyncio.TimeoutError:  # the window is full: the first request (START) has been sent
                        tally.sent += 1
                        yield message_of(_keepalive(kwargs))
                tally.sent += 1
                yield message_of(kwargs)
            tally.through = True
        except Exception as e:  # the source's own error: half-close, then raised to the consumer
            failure.append(e)

    call = triton._client_stub.ModelStreamInfer(messages(), metadata=triton._get_metadata(None), timeout=timeout)
    try:
        async for response in call:
            if response.error_message:
                raise refusal_status(InferenceServerException(msg=response.error_message))
            result = InferResult(response.infer_response)
            segment = tally.take(result, window)
            if segment is not None:
                yield segment
            if tally.done:
                return
        if failure:
            raise failure[0]
        raise InferenceServerException(f"{model}: the server closed the stream with {tally.sent - tally.answered} "
                                       "request(s) unanswered")  # fmt: skip
    except grpc.RpcError as e:
        raise get_error_grpc(e) from None
    finally:
        call.cancel()  # a consumer that stopped early ends the gRPC stream


def chunked(samples: np.ndarray, chunk_ms: int) -> Iterator[np.ndarray]:
    """A recording as consecutive chunks of `chunk_ms` (the last one shorter)."""
    if chunk_ms < 1:
        raise InvalidInput(f"chunk_ms must be at least 1, got {chunk_ms}")
    step = chunk_ms * SAMPLE_RATE // 1000
    for start in range(0, samples.size, step):
        yield samples[start : start + step]


def paced(chunks: Iterable[np.ndarray], clock=time.monotonic, sleep=time.sleep) -> Iterator[np.ndarray]:
    """The chunks at 1x, as a microphone gives them: each once its last sample would have been recorded."""
    start, recorded = clock(), 0
    for chunk in chunks:
        recorded += len(chunk)
        sleep(max(0.0, start + recorded / SAMPLE_RATE - clock()))
        yield chunk


async def paced_async(chunks: Iterable[np.ndarray], clock=time.monotonic) -> AsyncIterator[np.ndarray]:
    """`paced` for the asyncio client."""
    start, recorded = clock(), 0
    for chunk in chunks:
        recorded += len(chunk)
        await asyncio.sleep(max(0.0, start + recorded / SAMPLE_RATE - clock()))
        yield chunk
