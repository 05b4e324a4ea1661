"""Live, on CPU: `canary_qwen_stream` (live transcription) over raw tritonclient.grpc streams, on real speech
(pocketsphinx-testdata clips joined with pauses, as tests/test_longform_segmenter.py joins them).

The finals are the same (start, end, text, token ids) for 20-ms and 2-s chunks, with or without interim
results, and equal canary_qwen_long's segments on the same recording (over 40 s, so that it is segmented);
interims come only when asked, each a re-decode of the open utterance from its start, exactly canary_qwen's
answer on that slice; END flushes; eight streams at once each get their own finals; the limits (max_streams,
max_buffered_seconds, INTERIM_INTERVAL_MS, an unknown stream) are refused by name and the server serves on;
a client that vanishes without END has its stream freed after stream_idle_s, counted in the metric."""

from __future__ import annotations

import itertools
import queue
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from canary_trt.contract import (METRIC_STREAMS_CANCELLED, METRIC_STREAMS_EXPIRED, METRIC_STREAMS_OPEN, STREAM_MODEL,
                                 STREAM_REFUSAL, Budgets)  # fmt: skip
from canary_trt.export.repository import write_model_repository
from canary_trt.export_info import read_export_info
from canary_trt.longform import SegmenterOptions, StreamingSegmenter, segment, served_options
from canary_trt.server import TritonServer
from test_long_form import direct, long_form, per_segment
from test_longform_segmenter import clips, join  # noqa: F401 (clips: the recordings, a fixture)

MS = 16  # samples per millisecond
LIMITS = {"max_streams": 8, "stream_idle_s": 4, "max_buffered_seconds": 100}  # small, for the limits' tests
ANSWER_WAIT_S = 600  # a stuck stream fails the test instead of hanging it
_ids = itertools.count(1000)


@dataclass(frozen=True)
class Segment:
    start_ms: int
    end_ms: int
    text: bytes
    ids: tuple[int, ...]
    truncated: bool
    is_final: bool


@dataclass
class Answer:
    """What one request got: its segments in order, then its final flag or its error."""

    segments: list[Segment] = field(default_factory=list)
    error: str | None = None


class Stream:
    """One live stream over its own gRPC bidirectional stream (tritonclient: one stream per client)."""

    def __init__(self, url: str, corrid: int | None = None):
        self.corrid = next(_ids) if corrid is None else corrid
        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))
        self.sent = 0

    def send(self, wav, start=False, end=False, interim_ms=None) -> None:
        wav = np.asarray(wav, dtype=np.float32).reshape(1, -1)
        inputs = [grpcclient.InferInput("WAV", list(wav.shape), "FP32")]
        inputs[0].set_data_from_numpy(wav)
        if interim_ms is not None:
            inputs.append(grpcclient.InferInput("INTERIM_INTERVAL_MS", [1, 1], "INT32"))
            inputs[1].set_data_from_numpy(np.array([[interim_ms]], dtype=np.int32))
        self.client.async_stream_infer(STREAM_MODEL, inputs, sequence_id=self.corrid, sequence_start=start,
                                       sequence_end=end, enable_empty_final_response=True)  # fmt: skip
        self.sent += 1

    def answers(self, count: int) -> list[Answer]:
        """The next `count` requests' answers (the model answers a stream's requests in order)."""
        out, current = [], Answer()
        while len(out) < count:
            result, error = self.responses.get(timeout=ANSWER_WAIT_S)
            if error is not None:
                current.error = error.message()
            elif result.as_numpy("IS_FINAL") is not None:
                current.segments.append(_segment(result))
                continue
            else:
                assert result.get_response().parameters["triton_final_response"].bool_param
            out.append(current)
            current = Answer()
        return out

    def transcribe(self, audio, chunk_samples: int, interim_ms=None) -> list[Answer]:
        """The whole recording in chunks, START on the first, then an empty END request."""
        for i, at in enumerate(range(0, audio.size, chunk_samples)):
            self.send(audio[at : at + chunk_samples], start=i == 0, interim_ms=interim_ms if i == 0 else None)
        self.send(np.zeros(0), end=True)
        return self.answers(self.sent)

    def close(self, cancel=False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def transcribe(url: str, audio, chunk_samples: int, interim_ms=None) -> list[Answer]:
    stream = Stream(url)
    try:
        return stream.transcribe(audio, chunk_samples, interim_ms)
    finally:
        stream.close()


def _segment(result) -> Segment:
    one = lambda name: result.as_numpy(name)[0, 0]  # noqa: E731
    return Segment(int(one("SEGMENT_START_MS")), int(one("SEGMENT_END_MS")), one("SEGMENT_TEXT"),
                   tuple(result.as_numpy("SEGMENT_TOKEN_IDS")[0].tolist()), bool(one("SEGMENT_TRUNCATED")),
                   bool(one("IS_FINAL")))  # fmt: skip


def finals(answers: list[Answer]) -> list[Segment]:
    assert all(a.error is None for a in answers), [a.error for a in answers if a.error]
    return [s for a in answers for s in a.segments if s.is_final]


def interims(answers: list[Answer]) -> list[Segment]:
    return [s for a in answers for s in a.segments if not s.is_final]


def refusal(answer: Answer) -> str:
    assert answer.error is not None and not answer.segments, answer
    assert answer.error.startswith(STREAM_REFUSAL), answer.error
    return answer.error


def metric(server, name: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    found = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M)
    assert found, f"{name} not in the metrics"
    return float(found.group(1))


def run_together(*jobs):
    """Each job in its own thread, all at once; their results in order (a job's exception is re-raised)."""
    results = [None] * len(jobs)

    def run(i, job):
        try:
            results[i] = job()
        except BaseException as e:  # noqa: BLE001 (handed to the test's thread)
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


# --- without a server -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recording(clips) -> np.ndarray:  # noqa: F811
    """~1 minute: the 14 recordings once, shuffled, after pauses merged within a chunk or always skipped."""
    rng = np.random.default_rng(11)
    gaps = [700] + [int(rng.choice([450, 800, 1200, 2500, 3500], p=[0.3, 0.3, 0.2, 0.1, 0.1])) for _ in clips[1:]]
    audio = join([clips[i] for i in rng.permutation(len(clips))], gaps, seed=2).audio
    assert 50 < audio.size / 16000 < 75
    return audio


def test_the_segmenter_says_where_the_undecided_audio_starts(recording):
    """Fed 20 ms at a time: every later chunk starts at or after undecided_from_ms, and the open utterance's
    start is where its chunk starts (what the live model keeps and re-decodes)."""
    options = served_options.for_build(Budgets())  # the tiny build's: the default budgets
    stream, promises, chunks = StreamingSegmenter(options), [], []
    for at in range(0, recording.size, 20 * MS):
        for chunk in stream.feed(recording[at : at + 20 * MS]):
            chunks.append(chunk)
        promises.append((len(chunks), stream.segmenter.undecided_from_ms(), stream.segmenter.open_start_ms()))
    chunks += stream.finish()
    assert [(c.start_ms, c.end_ms) for c in chunks] == [(c.start_ms, c.end_ms) for c in segment(recording, options)]
    for decided, undecided_from, open_start in promises:
        assert all(c.start_ms >= undecided_from for c in chunks[decided:])
        if open_start is not None:
            assert chunks[decided].start_ms == open_start
    assert sum(open_start is not None for _, _, open_start in promises) > len(promises) // 2


# --- live ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(cpu_build, tmp_path_factory):
    """The whole repository with small stream limits (LIMITS)."""
    repo = write_model_repository(cpu_build, read_export_info(cpu_build), out=tmp_path_factory.mktemp("stream") / "repo",
                                  overrides=LIMITS)  # fmt: skip
    with TritonServer(repo) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as triton:
        yield triton


@pytest.fixture(scope="module")
def options(client) -> SegmenterOptions:
    """canary_qwen_stream's segmenter options, read back from its config: canary_qwen_long's."""
    read = {}
    for model in (STREAM_MODEL, "canary_qwen_long"):
        config = client.get_model_config(model, as_json=True)["config"]
        read[model] = served_options.from_parameters({k: v["string_value"] for k, v in config["parameters"].items()})
    assert read[STREAM_MODEL] == read["canary_qwen_long"]
    return read[STREAM_MODEL]


@pytest.fixture(scope="module")
def transcribed(server, client, recording):
    """The recording at once through canary_qwen_long and three live streams: 20-ms chunks, 2-s chunks, and
    2-s chunks with interim results every second."""
    url = server.grpc_url
    return run_together(lambda: long_form(client, recording), lambda: transcribe(url, recording, 20 * MS),
                        lambda: transcribe(url, recording, 2000 * MS),
                        lambda: transcribe(url, recording, 2000 * MS, interim_ms=1000))  # fmt: skip


def test_finals_do_not_depend_on_chunking_and_are_the_long_form_segments(transcribed, recording, options):
    long, fine, coarse, with_interims = transcribed
    texts = long["SEGMENT_TEXT"].tolist()
    long_segments = [(int(s), int(e), t, tuple(ids)) for s, e, t, ids in
                     zip(long["SEGMENT_START_MS"], long["SEGMENT_END_MS"], texts, per_segment(long))]  # fmt: skip
    assert len(long_segments) == len(segment(recording, options)) >= 4
    for answers in (fine, coarse, with_interims):
        assert [(s.start_ms, s.end_ms, s.text, s.ids) for s in finals(answers)] == long_segments
        assert [s.truncated for s in finals(answers)] == long["SEGMENT_TRUNCATED"].tolist()
    ends = [(s.start_ms, s.end_ms) for s in finals(fine)]
    assert all(end <= start for (_, end), (start, _) in zip(ends, ends[1:]))  # in time order, never overlapping


def test_interims_only_when_asked_each_a_re_decode_of_the_open_utterance(transcribed, client, recording, options):
    _, fine, coarse, with_interims = transcribed
    assert interims(fine) == interims(coarse) == []
    partial = interims(with_interims)
    assert partial, "no interim results"
    segments = [s for a in with_interims for s in a.segments]
    for i, s in enumerate(segments):  # each interim starts where its utterance's final starts
        if not s.is_final:
            following = next(f for f in segments[i:] if f.is_final)
            assert s.start_ms == following.start_ms and s.end_ms - s.start_ms <= options.max_chunk_ms
    first = partial[0]
    piece = recording[first.start_ms * MS : first.end_ms * MS]
    text, ids = direct(client, piece, max_new=options.token_budget(first.end_ms - first.start_ms))
    assert (first.text, list(first.ids)) == (text, ids)


def test_end_flushes_the_open_utterance(transcribed):
    """The recording ends in speech and a pause shorter than a merge: only END decides its last utterance."""
    _, fine, coarse, _ = transcribed
    for answers in (fine, coarse):
        assert answers[-1].segments and all(s.is_final for s in answers[-1].segments)


def test_eight_streams_at_once_each_get_their_own_finals(server, client, clips, options):  # noqa: F811
    recordings = [join([clips[i]], [500], seed=i).audio for i in range(LIMITS["max_streams"])]
    results = run_together(*(lambda audio=audio: transcribe(server.grpc_url, audio, 500 * MS) for audio in recordings))
    for audio, answers in zip(recordings, results):
        got = finals(answers)
        assert [(s.start_ms, s.end_ms) for s in got] == [(c.start_ms, c.end_ms) for c in segment(audio, options)]
        for s in got:
            piece = audio[s.start_ms * MS : s.end_ms * MS]
            assert direct(client, piece, max_new=options.token_budget(s.end_ms - s.start_ms)) == (s.text, list(s.ids))


def test_one_stream_over_max_streams_is_refused_by_name(server):
    noise = np.random.default_rng(5).standard_normal(8000).astype(np.float32) * np.float32(1e-3)
    streams = [Stream(server.grpc_url) for _ in range(LIMITS["max_streams"] + 1)]
    try:
        for stream in streams[:-1]:
            stream.send(noise, start=True)
        for stream in streams[:-1]:  # all open before the last one starts
            assert stream.answers(1) == [Answer()]
        assert metric(server, METRIC_STREAMS_OPEN) == LIMITS["max_streams"]
        streams[-1].send(noise, start=True)
        message = refusal(streams[-1].answers(1)[0])
        assert f"too many streams: {LIMITS['max_streams']} open (max_streams)" in message, message
        for stream in streams[:-1]:  # END frees them: no speech, no segments
            stream.send(noise, end=True)
            assert stream.answers(1) == [Answer()]
        assert metric(server, METRIC_STREAMS_OPEN) == 0
        late = streams[-1]  # the refused START opened nothing; a new one is served now
        late.corrid = next(_ids)
        late.send(noise, start=True)
        late.send(noise, end=True)
        assert late.answers(2) == [Answer(), Answer()]
    finally:
        for stream in streams:
            stream.close()


def test_audio_over_max_buffered_seconds_is_refused_by_name(server):
    stream = Stream(server.grpc_url)
    try:
        noise = np.random.default_rng(6).standard_normal(16000).astype(np.float32) * np.float32(1e-3)
        stream.send(noise, start=True)
        stream.send(np.tile(noise, LIMITS["max_buffered_seconds"]))  # what it holds (not all of 1 s of noise) + 100 s
        stream.send(noise, end=True)  # the stream goes on after the refusal
        opened, over, ended = stream.answers(3)
        assert opened == ended == Answer()
        message = refusal(over)
        assert "buffer over its maximum" in message and "(max_buffered_seconds)" in message, message
        assert re.search(r"holds 0\.\d\d s undecided or unsent and this request adds 100\.00 s", message), message
    finally:
        stream.close()


def test_bad_interim_interval_and_unknown_streams_are_refused_by_name(server, client):
    stream = Stream(server.grpc_url)
    try:
        noise = np.random.default_rng(7).standard_normal(16000).astype(np.float32) * np.float32(1e-3)
        stream.send(noise, start=True, interim_ms=200)
        message = refusal(stream.answers(1)[0])
        assert "INTERIM_INTERVAL_MS 200 out of range" in message, message
        stream.send(noise)  # the refused START opened no state: the stream is unknown to the model
        message = refusal(stream.answers(1)[0])
        assert f"unknown stream {stream.corrid}" in message, message
        stream.send(noise, end=True)  # ends Triton's sequence too
        assert refusal(stream.answers(1)[0])
        stream.corrid = next(_ids)  # bad audio on START: refused, and no state either
        stream.send(np.where(np.arange(noise.size) == 9, np.nan, noise), start=True)
        message = refusal(stream.answers(1)[0])
        assert "audio has 1 non-finite samples" in message, message
        stream.send(noise, end=True)
        assert f"unknown stream {stream.corrid}" in refusal(stream.answers(1)[0])
        stream.send(noise)  # a sequence Triton does not know: Triton itself refuses it, naming the flag
        message = stream.answers(1)[0].error
        assert "must specify the START flag" in message, message
        stream.corrid = next(_ids)  # START on an open stream: refused, the stream goes on
        stream.send(noise, start=True)
        stream.send(noise, start=True)
        stream.send(noise, end=True)
        opened, twice, ended = stream.answers(3)
        assert opened == ended == Answer() and f"stream {stream.corrid} is already open" in refusal(twice)
    finally:
        stream.close()
    assert client.is_server_ready() and client.is_model_ready(STREAM_MODEL)


def test_a_vanished_client_frees_its_stream_after_stream_idle_s(server, recording):
    expired = metric(server, METRIC_STREAMS_EXPIRED)
    stream = Stream(server.grpc_url)
    stream.send(recording[: 3 * 16000], start=True)
    stream.answers(1)
    assert metric(server, METRIC_STREAMS_OPEN) == 1
    stream.close(cancel=True)  # gone without END
    deadline = time.monotonic() + 20 * LIMITS["stream_idle_s"]  # a bound on the wait, not a timing assertion
    while metric(server, METRIC_STREAMS_EXPIRED) == expired and time.monotonic() < deadline:
        time.sleep(0.5)
    assert metric(server, METRIC_STREAMS_EXPIRED) == expired + 1
    assert metric(server, METRIC_STREAMS_OPEN) == 0
    again = Stream(server.grpc_url, corrid=stream.corrid)  # its state is gone: refused by the model or by Triton
    try:
        again.send(recording[:16000])
        message = again.answers(1)[0].error
        assert f"unknown stream {stream.corrid}" in message or "must specify the START flag" in message, message
    finally:
        again.close()


def test_a_client_that_cancels_during_a_decode_frees_its_stream_at_once(server, recording):
    """Seen on a request still in the model (its delivery awaits a decode), not after stream_idle_s."""
    cancelled, expired = metric(server, METRIC_STREAMS_CANCELLED), metric(server, METRIC_STREAMS_EXPIRED)
    stream = Stream(server.grpc_url)
    stream.send(recording[:16000], start=True)
    stream.send(recording[16000 : 30 * 16000])  # decides at least one final: its decode runs
    stream.answers(1)  # the START request's: the next one is in the model by now
    stream.close(cancel=True)
    deadline = time.monotonic() + 20 * LIMITS["stream_idle_s"]  # a bound on the wait, not a timing assertion
    while metric(server, METRIC_STREAMS_OPEN) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(server, METRIC_STREAMS_OPEN) == 0
    assert (metric(server, METRIC_STREAMS_CANCELLED), metric(server, METRIC_STREAMS_EXPIRED)) == (cancelled + 1, expired)
