"""`canary_qwen_stream`: live transcription, in both flavours. One stream is one Triton sequence (its correlation
id, START on the first request, END on the last); each request carries the next audio of any length. The stream's
state lives here: its audio not yet decided, the long-form segmenter with its own Silero VAD state, fed with
canary_qwen_long's options (read from this model's config, written by the same export code), so that the finals
are the segmenter's chunks of the whole recording whatever the chunking, and equal canary_qwen_long's segments
on a recording over 40 s. Each final is one `canary_qwen` request by BLS (chunks.py, shared with long_form.py).

Decoupled (the contract: docs/SERVING.md, Live transcription): one response per segment, then the
request's final flag. A final goes on the sender of the request during which its end was decided; with
INTERIM_INTERVAL_MS N (START request), every N ms of new audio in the open utterance it is re-decoded from its
start (IS_FINAL false, at most one interim decode in flight per stream: one due meanwhile is skipped). END
flushes: the rest is decided, sent, and the stream's state freed.

Order. The sequence batcher's oldest strategy issues a sequence's next request once the previous one is
released, and the python backend releases a decoupled model's requests as soon as `execute` returns: an async
execute of a decoupled model is run in the background (python_backend r24.10, 01d0ad82, src/pb_stub.cc
Stub::ProcessRequests -> RunCoroutine(in_background=true); src/python_be.cc TRITONBACKEND_ModelInstanceExecute
releases every request after ProcessRequests). So requests of one stream reach `accept` in order (each
coroutine is scheduled on the stub's event loop, FIFO, before the next request is issued) and `accept` takes
each whole before its first await: segmenter decisions never interleave. The answers are delivered by one task
per request, each awaiting the previous request's, so every response of a stream goes out in stream order even
when decodes finish out of order.

Budgets, refused by name with contract.STREAM_REFUSAL (a gRPC stream carries no status code; chat.py): at most
max_streams open (the next START is refused; Triton's sequence slots are kept well above it, so that it reaches
this model instead of waiting in Triton's backlog: core r24.10, bfec7c61, src/sequence_batch_scheduler/
sequence_batch_scheduler.cc, SequenceBatchScheduler::Enqueue backlogs a START when no slot is free), a stream
with no request for stream_idle_s is freed (counted in canary_trt_stream_expired_total; one whose client
cancelled while a request of it was still being answered is freed then, in canary_trt_stream_cancelled_total),
and the audio a stream holds undecided or unsent is at most max_buffered_seconds. Triton's max_sequence_idle_microseconds is the same
idle time: its reaper then frees the sequence slot without telling the model (same file, ReaperThread), so this
model keeps its own timer.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import numpy as np
import triton_python_backend_utils as pb_utils

from ..contract import (INPUT_INTERIM_INTERVAL_MS, INPUT_PROMPT, INPUT_WAV, METRIC_STREAMS_CANCELLED,
                        METRIC_STREAMS_EXPIRED, METRIC_STREAMS_OPEN,
                        MIN_INTERIM_INTERVAL_MS, OUTPUT_IS_FINAL, OUTPUT_SEGMENT_END_MS, OUTPUT_SEGMENT_START_MS,
                        OUTPUT_SEGMENT_TEXT, OUTPUT_SEGMENT_TOKEN_IDS, OUTPUT_SEGMENT_TRUNCATED, SAMPLE_RATE,
                        STREAM_CORRID, STREAM_END, STREAM_MODEL, STREAM_REFUSAL, STREAM_START, Budgets)
from ..errors import InvalidInput
from ..longform import StreamingSegmenter, SileroVad
from ..longform.served_options import from_parameters
from ..longform.vad import open_session
from .adapter import TritonPythonModel as Adapter
from .adapter import instruction_text
from .chunks import transcribe_chunk
from .triton import BadRequest, build_manifest, internal_error, log_error, parameters, refusal, respond, tensor

MODEL = STREAM_MODEL
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
SAMPLES_PER_MS = SAMPLE_RATE // 1000


@dataclass(frozen=True)
class StreamBudgets:
    """This model's config parameters (named so in its refusals)."""

    max_streams: int
    stream_idle_s: float
    max_buffered_seconds: float

    @property
    def max_buffered_samples(self) -> int:
        return round(self.max_buffered_seconds * SAMPLE_RATE)


class _Audio:
    """A stream's samples from `start` (a sample index from the stream's first) to `end`, in one array grown by
    doubling; samples before `start` are dropped by moving the rest down only when the array must grow."""

    def __init__(self):
        self._data = np.zeros(SAMPLE_RATE, dtype=np.float32)
        self._head = self._size = 0  # the held samples are _data[_head:_size]
        self.start = 0

    @property
    def end(self) -> int:
        return self.start + self._size - self._head

    def append(self, samples: np.ndarray) -> None:
        held = self._size - self._head
        if self._size + samples.size > self._data.size:
            grown = np.zeros(max(self._data.size, 2 * (held + samples.size)), dtype=np.float32)
            grown[:held] = self._data[self._head : self._size]
            self._data, self._head, self._size = grown, 0, held
        self._data[self._size : self._size + samples.size] = samples
        self._size += samples.size

    def copy(self, start: int, end: int) -> np.ndarray:
        if not self.start <= start <= end <= self.end:  # the segmenter's undecided_from_ms promises it
            raise RuntimeError(f"samples {start}-{end} asked, {self.start}-{self.end} held")
        return self._data[self._head + start - self.start : self._head + end - self.start].copy()

    def drop_before(self, sample: int) -> None:
        sample = min(max(sample, self.start), self.end)
        self._head += sample - self.start
        self.start = sample


@dataclass
class _Piece:
    """A segment on its way: a final chunk or an interim re-decode, its decode running."""

    start_ms: int
    end_ms: int
    max_new_tokens: int
    is_final: bool
    decode: asyncio.Future

    @property
    def samples(self) -> int:
        return (self.end_ms - self.start_ms) * SAMPLES_PER_MS


@dataclass
class _Stream:
    corrid: int
    segmenter: StreamingSegmenter
    prompt: np.ndarray | None
    interim_samples: int  # 0: no interim results
    audio: _Audio = field(default_factory=_Audio)
    unsent_samples: int = 0  # audio of pieces decided but not yet sent (a copy each)
    interim_mark: int = 0  # the sample at which the last interim was taken
    interim_busy: bool = False
    delivered: asyncio.Future | None = None  # the last request's delivery: the next one's answers go after it
    timer: asyncio.TimerHandle | None = None  # frees the stream after stream_idle_s without a request

    def held_samples(self) -> int:
        return self.audio.end - self.audio.start + self.unsent_samples


class TritonPythonModel:
    def initialize(self, args):
        config = parameters(args)
        self.budgets = StreamBudgets(int(config["max_streams"]), float(config["stream_idle_s"]),
                                     float(config["max_buffered_seconds"]))  # fmt: skip
        _check_sequence_batching(json.loads(args["model_config"]), self.budgets)
        build_budgets = Budgets.from_manifest(build_manifest(args)[1])
        self.options = from_parameters(config)  # canary_qwen_long's: the same export code writes both
        if self.options.max_chunk_s > build_budgets.max_audio_seconds:
            raise ValueError(f"{MODEL}: max_chunk_s {self.options.max_chunk_s:g} is over this build's "
                             f"{build_budgets.max_audio_seconds:g} s")  # fmt: skip
        self.decodes = asyncio.Semaphore(int(config["max_chunks_in_flight"]))  # over all streams
        self.vad_session = open_session()  # shared by the streams; each has its own VAD state
        self.adapter = Adapter()  # for its PROMPT check only (long_form.py says why)
        self.adapter.initialize(args)
        self.streams: dict[int, _Stream] = {}
        self.tasks: set[asyncio.Future] = set()  # held until done: the event loop keeps only weak references
        # the families are held as long as their metrics: a metric of a deleted family can no longer be set
        self.families = [
            pb_utils.MetricFamily(name=METRIC_STREAMS_OPEN, description="Live transcription streams open",
                                  kind=pb_utils.MetricFamily.GAUGE),
            pb_utils.MetricFamily(name=METRIC_STREAMS_EXPIRED, kind=pb_utils.MetricFamily.COUNTER,
                                  description="Live transcription streams freed after stream_idle_s without a request"),
            pb_utils.MetricFamily(name=METRIC_STREAMS_CANCELLED, kind=pb_utils.MetricFamily.COUNTER,
                                  description="Live transcription streams freed when their client cancelled"),
        ]  # fmt: skip
        self.open_gauge, self.expired_counter, self.cancelled_counter = (family.Metric(labels={"model": MODEL})
                                                                         for family in self.families)  # fmt: skip

    async def execute(self, requests):
        for request in requests:  # each taken whole, in arrival order (the module doc)
            self.accept(request)
        return None

    def finalize(self):
        for stream in self.streams.values():
            if stream.timer is not None:
                stream.timer.cancel()
        for task in self.tasks:
            task.cancel()

    # -- a request ----------------------------------------------------------------------------------------------

    def accept(self, request) -> None:
        sender = request.get_response_sender()
        stream, pieces, failure = None, [], None
        try:
            corrid, start, end = _controls(request)
            stream = self.open(corrid, request) if start else self.streams.get(corrid)
            if stream is None:
                raise BadRequest(f"unknown stream {corrid}: not started, already ended, or freed after stream_idle_s "
                                 f"({self.budgets.stream_idle_s:g} s) without a request")  # fmt: skip
            self.keep_alive(stream)
            try:
                pieces = self.take(stream, tensor(request, INPUT_WAV), end)
            except Exception:
                if start:  # a refused START opens nothing
                    self.close(stream)
                raise
            finally:
                if end:  # Triton ends the sequence whatever the request's fate
                    self.close(stream)
        except Exception as e:  # answered in the stream's order, after its earlier requests' segments
            failure = e
        previous = None if stream is None else stream.delivered
        delivery = self.spawn(self.deliver(previous, sender, pieces, failure, stream))
        if stream is not None:
            stream.delivered = delivery

    def open(self, corrid: int, request) -> _Stream:
        """A new stream's state, from its START request, checked whole before any state is made."""
        if corrid in self.streams:
            raise BadRequest(f"stream {corrid} is already open (START sent twice)")
        if len(self.streams) >= self.budgets.max_streams:
            raise BadRequest(f"too many streams: {len(self.streams)} open (max_streams)")
        interval = tensor(request, INPUT_INTERIM_INTERVAL_MS, required=False)
        interval_ms = 0 if interval is None else int(interval.reshape(-1)[0])
        if interval_ms < 0 or 0 < interval_ms < MIN_INTERIM_INTERVAL_MS:
            raise BadRequest(f"{INPUT_INTERIM_INTERVAL_MS} {interval_ms} out of range: 0 (no interim results) or at "
                             f"least {MIN_INTERIM_INTERVAL_MS} ms")  # fmt: skip
        prompt = tensor(request, INPUT_PROMPT, required=False)
        if prompt is not None:
            self.adapter.prompt_ids(instruction_text(prompt[0, 0]))
        stream = _Stream(corrid, StreamingSegmenter(self.options, SileroVad(self.vad_session)), prompt,
                         interim_samples=interval_ms * SAMPLES_PER_MS)  # fmt: skip
        self.streams[corrid] = stream
        self.open_gauge.set(len(self.streams))
        return stream

    def take(self, stream: _Stream, wav: np.ndarray, end: bool) -> list[_Piece]:
        """The request's audio through the stream's segmenter: the pieces it decided, their decodes started."""
        if wav.ndim != 2 or wav.shape[0] != 1:
            raise BadRequest(f"WAV must be [1, samples] (one stream's next audio); got {wav.shape}")
        samples = wav[0]
        held, limit = stream.held_samples(), self.budgets.max_buffered_samples
        if held + samples.size > limit:  # before any sample is read
            raise BadRequest(f"buffer over its maximum: the stream holds {held / SAMPLE_RATE:.2f} s undecided or unsent "
                             f"and this request adds {samples.size / SAMPLE_RATE:.2f} s; the maximum is "
                             f"{self.budgets.max_buffered_seconds:g} s (max_buffered_seconds)")  # fmt: skip
        if not np.isfinite(samples).all():
            raise BadRequest(f"audio has {int(np.count_nonzero(~np.isfinite(samples)))} non-finite samples (NaN or Inf)")
        stream.audio.append(samples)
        segmenter = stream.segmenter
        chunks = segmenter.feed(samples) + (segmenter.finish() if end else [])
        pieces = [self.decode(stream, c.start_ms, c.end_ms, c.max_new_tokens, is_final=True) for c in chunks]
        if not end and stream.interim_samples:
            pieces += self.interim(stream)
        stream.audio.drop_before(segmenter.segmenter.undecided_from_ms() * SAMPLES_PER_MS)
        return pieces

    def interim(self, stream: _Stream) -> list[_Piece]:
        """A re-decode of the open utterance from its start, when it has grown by the interval since the last."""
        start_ms = stream.segmenter.segmenter.open_start_ms()
        if start_ms is None:
            return []
        now = stream.audio.end
        if stream.interim_busy or now - max(stream.interim_mark, start_ms * SAMPLES_PER_MS) < stream.interim_samples:
            return []
        stream.interim_mark = now
        end_ms = min(now // SAMPLES_PER_MS, start_ms + self.options.max_chunk_ms)  # no longer than its final can be
        piece = self.decode(stream, start_ms, end_ms, self.options.token_budget(end_ms - start_ms), is_final=False)
        stream.interim_busy = True
        piece.decode.add_done_callback(lambda _: setattr(stream, "interim_busy", False))
        return [piece]

    def decode(self, stream: _Stream, start_ms: int, end_ms: int, max_new_tokens: int, is_final: bool) -> _Piece:
        wav = stream.audio.copy(start_ms * SAMPLES_PER_MS, end_ms * SAMPLES_PER_MS)
        label = f"{'chunk' if is_final else 'interim'} {start_ms}-{end_ms} ms"
        piece = _Piece(start_ms, end_ms, max_new_tokens, is_final,
                       self.spawn(self.transcribe(wav, max_new_tokens, stream.prompt, label)))  # fmt: skip
        stream.unsent_samples += piece.samples
        return piece

    async def transcribe(self, wav, max_new_tokens, prompt, label) -> tuple[bytes, np.ndarray]:
        async with self.decodes:
            return await transcribe_chunk(wav, max_new_tokens, prompt, label)

    async def deliver(self, previous, sender, pieces: list[_Piece], failure: Exception | None, stream) -> None:
        """The request's segments in order, after every earlier request's; then its final flag (or its error,
        after the segments that did decode: none is dropped for another's failure)."""
        if previous is not None:
            await asyncio.wait([previous])
        for piece in pieces:
            try:
                text, ids = await piece.decode
                self.send(sender, respond(segment(piece, text, ids)))
            except Exception as e:
                failure = failure or e
            finally:
                stream.unsent_samples -= piece.samples
        if stream is not None and sender.is_cancelled():
            self.cancelled(stream)
        if failure is None:
            self.send(sender, None, FINAL)
        elif isinstance(failure, (BadRequest, InvalidInput)):  # the marker for the stream (contract.py)
            self.send(sender, refusal(BadRequest(f"{STREAM_REFUSAL}{failure}")), FINAL)
        else:  # a decode failed, or a bug: this request's explicit error; the stream and the server go on
            self.send(sender, internal_error(MODEL, failure)[0], FINAL)

    @staticmethod
    def send(sender, response, flags: int = 0) -> None:
        try:
            sender.send(response, flags=flags)
        except Exception as e:  # the client is gone (its gRPC stream closed): nobody to tell
            log_error(f"{MODEL}: a response could not be sent: {e}")

    # -- the stream's lifetime ----------------------------------------------------------------------------------

    def keep_alive(self, stream: _Stream) -> None:
        if stream.timer is not None:
            stream.timer.cancel()
        stream.timer = asyncio.get_running_loop().call_later(self.budgets.stream_idle_s, self.expire, stream)

    def expire(self, stream: _Stream) -> None:
        """No request for stream_idle_s (a client that vanished without END): its state is freed."""
        if self.streams.get(stream.corrid) is stream:
            self.close(stream)
            self.expired_counter.increment(1)

    def cancelled(self, stream: _Stream) -> None:
        """Its client cancelled the gRPC stream (Triton marks the stream's requests cancelled): the state is freed
        now, not after stream_idle_s. Triton itself still holds the sequence's slot until its reaper ends it."""
        if self.streams.get(stream.corrid) is stream:
            self.close(stream)
            self.cancelled_counter.increment(1)

    def close(self, stream: _Stream) -> None:
        if stream.timer is not None:
            stream.timer.cancel()
        if self.streams.get(stream.corrid) is stream:
            del self.streams[stream.corrid]
            self.open_gauge.set(len(self.streams))

    def spawn(self, coroutine) -> asyncio.Future:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


def _controls(request) -> tuple[int, bool, bool]:
    """(correlation id, START, END) from the sequence batcher's control tensors (config: sequence_batching)."""
    corrid, start, end = (tensor(request, name) for name in (STREAM_CORRID, STREAM_START, STREAM_END))
    return int(corrid.reshape(-1)[0]), bool(start.reshape(-1)[0]), bool(end.reshape(-1)[0])


def segment(piece: _Piece, text: bytes, ids: np.ndarray) -> dict[str, np.ndarray]:
    def one(value, dtype):  # [1, 1]: the request's batch of one
        return np.array([[value]], dtype=dtype)

    return {
        OUTPUT_SEGMENT_START_MS: one(piece.start_ms, np.int32), OUTPUT_SEGMENT_END_MS: one(piece.end_ms, np.int32),
        OUTPUT_SEGMENT_TEXT: one(text, object), OUTPUT_SEGMENT_TOKEN_IDS: np.asarray(ids, np.int32).reshape(1, -1),
        OUTPUT_SEGMENT_TRUNCATED: one(len(ids) >= piece.max_new_tokens, bool), OUTPUT_IS_FINAL: one(piece.is_final, bool),
    }  # fmt: skip


def _check_sequence_batching(config: dict, budgets: StreamBudgets) -> None:
    """A config whose Triton limits disagree with this model's is refused at load (they are filled together)."""
    batching = config.get("sequence_batching", {})
    slots = int(batching.get("oldest", {}).get("max_candidate_sequences", 0))
    idle_us = int(batching.get("max_sequence_idle_microseconds", 0))
    if slots <= budgets.max_streams or idle_us != round(budgets.stream_idle_s * 1e6):
        raise ValueError(f"{MODEL}: sequence_batching must be oldest with max_candidate_sequences > max_streams "
                         f"({budgets.max_streams}) and max_sequence_idle_microseconds = stream_idle_s; got {slots} "
                         f"and {idle_us} us")  # fmt: skip
