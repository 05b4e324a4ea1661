"""Transcribe over gRPC with the `canary_qwen` ensemble of a canary-trt Triton server.

    from canary_trt.client import TranscriptionClient
    with TranscriptionClient("127.0.0.1:8001") as client:
        print(client.transcribe("speech.flac").text)

Audio may be a path, encoded bytes (wav/flac/ogg) or a numpy array with its sample rate; any rate and
channel count (downmixed, resampled to 16 kHz on the client). One request per clip; the server batches
concurrent requests. `AsyncTranscriptionClient` runs many at once with bounded concurrency.
`prompt=`: the instruction, sent as the PROMPT tensor (`tensors.py`); `max_new_tokens=`: the generation
limit; None for either: the server's default.

Long recordings: audio longer than `contract.MAX_AUDIO_SECONDS` (40 s), or any audio with `long_form=True`,
goes to `canary_qwen_long` (docs/SERVING.md#long-recordings), which cuts it at pauses and transcribes each
segment through the ensemble; `long_form=False` always sends it to the ensemble (which refuses over 40 s).
`max_new_tokens` is for the ensemble only (the long model sets each segment's budget from its length).
Every `Transcription` has `segments`: the long model's, or for a clip sent to the ensemble one segment over
the whole clip ([0, its length in whole ms], as the long model answers for such a clip).
Both expose the underlying tritonclient `InferenceServerClient` as `.triton` (metadata, statistics), and
every endpoint's as `.endpoints[i].triton` when there are several (`.triton`: the first one's).

Live transcription: `stream(chunks)` sends float32 16-kHz chunks as they come to `canary_qwen_stream` over
one gRPC bidirectional stream and yields `StreamSegment`s, interim and final (`streaming.py`).

Retries (`retry.RetryPolicy`): a request the server could not take (unavailable, overloaded) is sent again
with backoff, then `RetriesExhausted` is raised; anything else is raised as it came. Several replicas
(`endpoints.EndpointPool`): `url` may name several endpoints, or a name with several addresses; each
request goes to the least busy healthy one, an unreachable one is taken out for a while. Each
`Transcription` names the endpoint that answered.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..audio import duration, load_audio
from ..contract import MAX_AUDIO_SECONDS, SAMPLE_RATE
from ..errors import InvalidInput
from .chat import Answer, AnswerDelta, StreamTimer, chat_request, stream_async, stream_sync
from .endpoints import AsyncEndpointPool, Dispatch, Endpoint, EndpointPool
from .retry import RetriesExhausted, RetryPolicy
from .streaming import (STREAM_MODEL, StreamOptions, StreamSegment, new_sequence_id, requests_of, requests_of_async,
                        segments_async, segments_sync)  # fmt: skip
from .tensors import LONG_MODEL, MODEL, Segment, read_long_response, read_response, request_inputs, whole_clip_segment

__all__ = ["DEFAULT_URL", "LONG_MODEL", "MODEL", "STREAM_MODEL", "Answer", "AnswerDelta", "AsyncTranscriptionClient",
           "RetriesExhausted", "RetryPolicy", "Segment", "StreamSegment", "Transcription",
           "TranscriptionClient"]  # fmt: skip

DEFAULT_URL = "127.0.0.1:8001"


@dataclass
class Transcription:
    text: str
    token_ids: list[int]
    audio_seconds: float
    latency_seconds: float  # request sent -> response received
    endpoint: str | None = None  # the server that answered, host:port
    segments: list[Segment] = field(default_factory=list)  # in order; token_ids is theirs concatenated


def _is_long(samples: np.ndarray, long_form: bool | None, max_new_tokens: int | None) -> bool:
    """Whether the clip goes to the long-form model (module doc); refuses max_new_tokens for it."""
    long = samples.size > MAX_AUDIO_SECONDS * SAMPLE_RATE if long_form is None else bool(long_form)
    if long and max_new_tokens is not None:
        raise InvalidInput(f"max_new_tokens is not taken by {LONG_MODEL} (audio over {MAX_AUDIO_SECONDS:g} s or "
                           "long_form=True): it sets each segment's budget from the segment's length")  # fmt: skip
    return long


def _transcription(response, samples: np.ndarray, start: float, endpoint: str, long: bool,
                   max_new_tokens: int | None) -> Transcription:  # fmt: skip
    latency = time.perf_counter() - start
    if long:
        text, token_ids, segments = read_long_response(response)
    else:
        text, token_ids = read_response(response)
        segments = [whole_clip_segment(samples.size, text, token_ids, max_new_tokens)]
    return Transcription(text, token_ids, duration(samples), latency, endpoint, segments)


class TranscriptionClient:
    def __init__(self, url: str | list[str] = DEFAULT_URL, model: str = MODEL, timeout: float | None = None,
                 retry: RetryPolicy | None = None, long_model: str = LONG_MODEL,
                 stream_model: str = STREAM_MODEL):  # fmt: skip
        import tritonclient.grpc as grpcclient

        self._module, self.model, self.long_model, self.timeout = grpcclient, model, long_model, timeout
        self.stream_model = stream_model
        self.retry = retry or RetryPolicy()
        self.pool = EndpointPool(url, grpcclient.InferenceServerClient, self.retry)
        self._stream_lock = threading.Lock()  # a tritonclient.grpc client holds one stream at a time

    @property
    def triton(self):
        """The first endpoint's tritonclient client (metadata, statistics)."""
        return self.pool.endpoints[0].triton

    @property
    def endpoints(self) -> list[Endpoint]:
        return self.pool.endpoints

    def transcribe(self, audio, sample_rate: int | None = None, prompt: str | None = None,
                   max_new_tokens: int | None = None, long_form: bool | None = None) -> Transcription:  # fmt: skip
        samples = load_audio(audio, sample_rate)
        long = _is_long(samples, long_form, max_new_tokens)
        model = self.long_model if long else self.model
        dispatch = Dispatch(self.pool)
        while True:
            start = time.perf_counter()
            try:
                with dispatch.attempt() as endpoint:
                    inputs = request_inputs(self._module, samples, prompt, max_new_tokens)
                    response = endpoint.triton.infer(model, inputs, client_timeout=self.timeout)
                return _transcription(response, samples, start, endpoint.url, long, max_new_tokens)
            except Exception as e:
                time.sleep(dispatch.pause(e))

    def ask(self, question: str, audio=None, sample_rate: int | None = None, enable_thinking: bool | None = None,
            max_new_tokens: int | None = None) -> Answer:  # fmt: skip
        """LLM mode (`chat.py`): the base LLM's answer to `question` about `audio` (any length; None: the
        question alone). enable_thinking / max_new_tokens None: the server's defaults (thinking on)."""
        *_, answer = self.ask_stream(question, audio, sample_rate, enable_thinking, max_new_tokens, stream=False)
        return answer

    def ask_stream(self, question: str, audio=None, sample_rate: int | None = None,
                   enable_thinking: bool | None = None, max_new_tokens: int | None = None,
                   stream: bool = True) -> Iterator[AnswerDelta | Answer]:  # fmt: skip
        """`ask`, yielding the answer's pieces of text as they come, then the `Answer`. A failure before
        anything came is retried as `transcribe`'s; after that it is raised."""
        samples = None if audio is None else load_audio(audio, sample_rate)
        dispatch = Dispatch(self.pool)
        while True:
            received = False
            try:
                with self._stream_lock, dispatch.attempt() as endpoint:
                    inputs = chat_request(self._module, question, samples, enable_thinking, max_new_tokens, stream)
                    timer = StreamTimer(endpoint.url)
                    for item in stream_sync(endpoint.triton, inputs, self.timeout):
                        received = True
                        yield timer.take(item)
                return
            except Exception as e:
                if received:
                    raise
                time.sleep(dispatch.pause(e))

    def stream(self, chunks: Iterable, interim_interval_ms: int | None = None,
               prompt: str | None = None) -> Iterator[StreamSegment]:  # fmt: skip
        """Live transcription (`streaming.py`): `chunks`, float32 16-kHz mono arrays of any length, are sent as
        they come; yields the interim (interim_interval_ms > 0, at least 500) and final segments as they are
        decided, the last final once `chunks` has run out. One stream at a time per client; `timeout`: the
        whole stream's."""
        options = StreamOptions(interim_interval_ms, prompt)
        with self._stream_lock, Dispatch(self.pool).attempt() as endpoint:
            requests = requests_of(self._module, chunks, new_sequence_id(), options)
            yield from segments_sync(endpoint.triton, self.stream_model, requests, self.timeout)

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
    that succeeded. Names are looked up again in a worker thread (`endpoints.AsyncEndpointPool`): the event
    loop never waits on DNS, except for the first look-up, made here when the client is created.
    """

    def __init__(self, url: str | list[str] = DEFAULT_URL, model: str = MODEL, concurrency: int = 8,
                 timeout: float | None = None, retry: RetryPolicy | None = None,
                 long_model: str = LONG_MODEL, stream_model: str = STREAM_MODEL):  # fmt: skip
        import tritonclient.grpc.aio as grpcclient

        if concurrency < 1:
            raise InvalidInput("concurrency must be at least 1")
        self._module, self.model, self.long_model, self.timeout = grpcclient, model, long_model, timeout
        self.stream_model = stream_model
        self.retry = retry or RetryPolicy()
        self.pool = AsyncEndpointPool(url, grpcclient.InferenceServerClient, self.retry)
        self._slots = asyncio.Semaphore(concurrency)

    triton = TranscriptionClient.triton
    endpoints = TranscriptionClient.endpoints

    async def transcribe(self, audio, sample_rate: int | None = None, prompt: str | None = None,
                         max_new_tokens: int | None = None, long_form: bool | None = None) -> Transcription:  # fmt: skip
        samples = None
        dispatch = Dispatch(self.pool)
        while True:
            async with self._slots:
                if samples is None:
                    samples = await asyncio.to_thread(load_audio, audio, sample_rate)
                    long = _is_long(samples, long_form, max_new_tokens)
                    model = self.long_model if long else self.model
                start = time.perf_counter()
                try:
                    with dispatch.attempt() as endpoint:
                        inputs = request_inputs(self._module, samples, prompt, max_new_tokens)
                        response = await endpoint.triton.infer(model, inputs, client_timeout=self.timeout)
                    return _transcription(response, samples, start, endpoint.url, long, max_new_tokens)
                except Exception as e:
                    pause = dispatch.pause(e)
            await asyncio.sleep(pause)  # outside the slot; 0: another endpoint takes it at once

    async def transcribe_many(self, audios, return_exceptions: bool = False, **options) -> list:
        """Results in the order of `audios`. A failure raises the first exception, unless
        `return_exceptions`: then each failed clip's exception takes its place in the list."""
        return await asyncio.gather(*(self.transcribe(audio, **options) for audio in audios),
                                    return_exceptions=return_exceptions)  # fmt: skip

    async def ask(self, question: str, audio=None, sample_rate: int | None = None,
                  enable_thinking: bool | None = None, max_new_tokens: int | None = None) -> Answer:  # fmt: skip
        """TranscriptionClient.ask, within this client's concurrency."""
        async for item in self.ask_stream(question, audio, sample_rate, enable_thinking, max_new_tokens, stream=False):
            answer = item
        return answer

    async def ask_stream(self, question: str, audio=None, sample_rate: int | None = None,
                         enable_thinking: bool | None = None, max_new_tokens: int | None = None,
                         stream: bool = True) -> AsyncIterator[AnswerDelta | Answer]:  # fmt: skip
        """TranscriptionClient.ask_stream; a call holds one of this client's slots until its final result."""
        samples = None if audio is None else await asyncio.to_thread(load_audio, audio, sample_rate)
        dispatch = Dispatch(self.pool)
        while True:
            received = False
            async with self._slots:
                try:
                    with dispatch.attempt() as endpoint:
                        inputs = chat_request(self._module, question, samples, enable_thinking, max_new_tokens, stream)
                        timer = StreamTimer(endpoint.url)
                        async for item in stream_async(endpoint.triton, inputs, self.timeout):
                            received = True
                            yield timer.take(item)
                    return
                except Exception as e:
                    if received:
                        raise
                    pause = dispatch.pause(e)
            await asyncio.sleep(pause)

    async def stream(self, chunks: AsyncIterable | Iterable, interim_interval_ms: int | None = None,
                     prompt: str | None = None) -> AsyncIterator[StreamSegment]:  # fmt: skip
        """TranscriptionClient.stream; `chunks` an async iterable (or a plain one); a stream holds one of this
        client's slots until it ends, and any number run at once on one client."""
        if not isinstance(chunks, AsyncIterable):
            chunks = _aiter(chunks)
        options = StreamOptions(interim_interval_ms, prompt)
        async with self._slots:
            with Dispatch(self.pool).attempt() as endpoint:
                requests = requests_of_async(self._module, chunks, new_sequence_id(), options)
                async for segment in segments_async(endpoint.triton, self.stream_model, requests, self.timeout):
                    yield segment

    async def close(self) -> None:
        self.pool.cancel_lookup()
        for triton in self.pool.clients():
            await triton.close()

    async def __aenter__(self) -> "AsyncTranscriptionClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def _aiter(items: Iterable) -> AsyncIterator:
    for item in items:
        yield item
