"""Live, on CPU: live transcription through `canary_qwen_stream` on the real tritonserver (tiny random
checkpoint) with the gRPC clients (`TranscriptionClient.stream`, its asyncio twin), `canary-trt-client
stream` and benchmarks/streaming.py.

A ~50-s recording (the LibriVox clips with 1-s pauses of faint noise) streamed in 100-ms chunks (sync) and in
2-s chunks (asyncio, with interims) gives final segments exactly canary_qwen_long's on the same recording;
refusals come back as INVALID_ARGUMENT; a consumer that stops early frees the client for the next stream."""

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from canary_trt.client import AsyncTranscriptionClient, TranscriptionClient
from canary_trt.client.cli import main
from canary_trt.client.retry import INVALID_INPUT, classify
from canary_trt.client import streaming
from canary_trt.client.streaming import (KEEPALIVE_ID, MAX_UNANSWERED, StreamOptions, StreamSegment, chunked,
                                         new_sequence_id, paced, requests_of, segments_sync)  # fmt: skip
from canary_trt.contract import MIN_INTERIM_INTERVAL_MS, SAMPLE_RATE, STREAM_MODEL
from canary_trt.errors import InvalidInput

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def recording(clips) -> np.ndarray:
    """The 5 LibriVox clips, then 3 of them again, each after 1 s of -60 dBFS noise: ~50 s (over 40 s)."""
    names = sorted(name for name in clips if name.isdigit())
    pause = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate([piece for name in names + names[:3] for piece in (pause, clips[name])] + [pause])
    audio += np.random.default_rng(5).standard_normal(audio.size).astype(np.float32) * np.float32(1e-3)
    assert 40 < audio.size / SAMPLE_RATE < 60
    return audio


@pytest.fixture(scope="module")
def long_segments(server, recording) -> list[tuple]:
    """canary_qwen_long's segments of the recording, as (start_s, end_s, text, token_ids, truncated)."""
    with TranscriptionClient(server.grpc_url) as client:
        segments = client.transcribe(recording, sample_rate=SAMPLE_RATE).segments
    assert len(segments) > 1
    return [_fields(s) for s in segments]


def _fields(segment) -> tuple:
    return segment.start_s, segment.end_s, segment.text, segment.token_ids, segment.truncated


def test_sync_stream_finals_are_the_long_form_segments(server, recording, long_segments):
    with TranscriptionClient(server.grpc_url) as client:
        segments = list(client.stream(chunked(recording, 100)))
    assert all(isinstance(s, StreamSegment) and s.is_final for s in segments)  # no interims asked for
    assert [_fields(s) for s in segments] == long_segments


def test_async_stream_with_interims_and_other_chunks_gives_the_same_finals(server, recording, long_segments):
    async def run():
        async def chunks():  # an async source, as a microphone reader would be
            for chunk in chunked(recording, 2000):
                yield chunk

        async with AsyncTranscriptionClient(server.grpc_url) as client:
            return [s async for s in client.stream(chunks(), interim_interval_ms=1000)]

    segments = asyncio.run(run())
    finals = [s for s in segments if s.is_final]
    assert [_fields(s) for s in finals] == long_segments
    interims = [(i, s) for i, s in enumerate(segments) if not s.is_final]
    assert interims  # utterances over a second long get hypotheses before their end is decided
    for i, interim in interims:  # the open utterance's: it starts where the next final will
        following = next(s for s in segments[i:] if s.is_final)
        assert interim.start_s == following.start_s and interim.end_s > interim.start_s


def test_many_async_streams_at_once_each_get_their_own_finals(server, recording, long_segments, clips):
    short = clips["10s"]

    async def run():
        async with AsyncTranscriptionClient(server.grpc_url, concurrency=3) as client:
            async def one(audio, chunk_ms):
                return [s async for s in client.stream(chunked(audio, chunk_ms))]

            return await asyncio.gather(one(recording, 500), one(short, 300), one(short, 40))

    long, short_a, short_b = asyncio.run(run())
    assert [_fields(s) for s in long] == long_segments
    assert [_fields(s) for s in short_a] == [_fields(s) for s in short_b] and short_a


def test_refusals_and_bad_chunks(server, clips):
    with TranscriptionClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException) as info:
            list(client.stream(chunked(clips["1s"], 100), interim_interval_ms=MIN_INTERIM_INTERVAL_MS - 1))
        assert classify(info.value) == INVALID_INPUT and info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert str(MIN_INTERIM_INTERVAL_MS) in str(info.value)
        with pytest.raises(InvalidInput, match=r"stream chunk 1: expected a 1-D array .* shape \(2, 100\)"):
            list(client.stream([clips["1s"][:800], np.zeros((2, 100), np.float32)]))
        assert list(client.stream([])) == []  # no audio: START and END on one empty request, nothing to say

        # a sequence Triton does not hold (here never started; in life, idle past stream_idle_s): Triton's own refusal
        requests = requests_of(grpcclient, [clips["1s"]], new_sequence_id(), StreamOptions())
        next(requests)  # the START request, never sent
        with pytest.raises(InferenceServerException, match="START flag") as info:
            list(segments_sync(client.triton, STREAM_MODEL, requests, None))
        assert classify(info.value) == INVALID_INPUT


def test_a_consumer_that_stops_early_frees_the_client(server, recording, long_segments, clips):
    with TranscriptionClient(server.grpc_url) as client:
        before = list(client.stream(chunked(clips["10s"], 1000)))
        stream = client.stream(chunked(recording, 100))
        assert _fields(next(stream)) == long_segments[0]
        stream.close()  # cancels the gRPC stream (the server's side: test_streaming.py)
        assert list(client.stream(chunked(clips["10s"], 1000))) == before



def test_cli_stream_prints_finals_and_json(server, recording, long_segments, clips, tmp_path, capsys):
    path = tmp_path / "long.wav"
    sf.write(path, recording, SAMPLE_RATE, subtype="FLOAT")  # the very samples
    assert main(["stream", str(path), "--url", server.grpc_url, "--json", "--chunk-ms", "250"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["start_s"], r["end_s"], r["text"], r["token_ids"], r["truncated"]) for r in rows] == long_segments
    assert all(r["is_final"] for r in rows)


    short = tmp_path / "short.wav"
    sf.write(short, clips["10s"], SAMPLE_RATE, subtype="FLOAT")
    with TranscriptionClient(server.grpc_url) as client:
        segments = list(client.stream(chunked(clips["10s"], 100), interim_interval_ms=1000))
    assert main(["stream", str(short), "--url", server.grpc_url, "--realtime", "--interim-ms", "1000"]) == 0
    out = capsys.readouterr()  # not a terminal: one line per segment, interims marked, each text on one line
    finals = [line for line in out.out.splitlines() if not re.match(r"\[.{17}\] ~ ", line)]
    assert finals == [f"[{s.start_s:7.2f} - {s.end_s:7.2f}] {' '.join(s.text.split())}" for s in segments if s.is_final]
    assert len(out.out.splitlines()) > len(finals) and any(not s.is_final for s in segments)
    assert "final segments" in out.err

    assert main(["stream", str(short), "--url", server.grpc_url, "--interim-ms", "100"]) == 2
    assert str(MIN_INTERIM_INTERVAL_MS) in capsys.readouterr().err


def test_streaming_benchmark_on_a_short_run(server, tmp_path):
    out = tmp_path / "streaming.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/streaming.py"), "--url", server.grpc_url,
                           "--streams", "2", "--seconds", "6", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert {"machine", "url", "model_parameters", "levels"} <= set(report) and report["realtime"] is True
    (level,) = report["levels"]
    assert level["streams"] == 2 and level["failed_streams"] == 0 and level["finals"] >= 2
    for name in ("final_delay_seconds", "first_interim_delay_seconds"):
        assert set(level[name]) == {"p50", "p90", "max", "n"}
    assert level["final_delay_seconds"]["n"] == level["finals"]
    assert "final p50/p90 s" in done.stdout


def test_requests_carry_start_options_first_and_end_on_an_empty_last_one():
    audio = np.linspace(-0.5, 0.5, 3500, dtype=np.float32)
    requests = list(requests_of(grpcclient, chunked(audio, 100), 42, StreamOptions(1000, "Transcribe:")))
    assert [(r["request_id"], r["sequence_id"], r["sequence_start"], r["sequence_end"]) for r in requests] == \
        [("0", 42, True, False), ("1", 42, False, False), ("2", 42, False, False), ("3", 42, False, True)]
    assert [[i.name() for i in r["inputs"]] for r in requests] == \
        [["WAV", "INTERIM_INTERVAL_MS", "PROMPT"], ["WAV"], ["WAV"], ["WAV"]]
    assert [r["inputs"][0].shape() for r in requests] == [[1, 1600], [1, 1600], [1, 300], [1, 0]]
    (only,) = requests_of(grpcclient, [], 7, StreamOptions())
    assert only["sequence_start"] and only["sequence_end"] and only["inputs"][0].shape() == [1, 0]


def test_paced_gives_each_chunk_once_it_would_have_been_recorded():
    now, sleeps = [100.0], []

    def sleep(seconds):
        sleeps.append(round(seconds, 6))
        now[0] += seconds

    chunks = list(paced(chunked(np.zeros(8000, np.float32), 200), clock=lambda: now[0], sleep=sleep))
    assert [len(c) for c in chunks] == [3200, 3200, 1600] and sleeps == [0.2, 0.2, 0.1]


class _SlowServer:
    """A stand-in tritonclient.grpc client whose answers all wait until `hold` s after the first request (a stream
    whose first utterance takes long to decode), then come at once; it records what was sent."""

    def __init__(self, hold: float):
        self.hold, self.sent, self.most_unanswered, self.unanswered = hold, [], 0, 0
        self.release_at, self.lock = None, threading.Lock()

    def start_stream(self, callback, stream_timeout=None):
        self.callback = callback

    def async_stream_infer(self, model, enable_empty_final_response, **kwargs):
        from tritonclient.grpc import InferResult, service_pb2

        request_id = kwargs["request_id"]
        with self.lock:
            self.sent.append(request_id)
            self.release_at = self.release_at or time.monotonic() + self.hold
            if request_id != KEEPALIVE_ID:
                self.unanswered += 1
                self.most_unanswered = max(self.most_unanswered, self.unanswered)
        response = service_pb2.ModelInferResponse(id=request_id)
        response.parameters["triton_final_response"].bool_param = True

        def answer():
            with self.lock:
                self.unanswered -= request_id != KEEPALIVE_ID
            self.callback(InferResult(response), None)

        threading.Timer(max(0.0, self.release_at - time.monotonic()), answer).start()

    def stop_stream(self, cancel_requests=False):
        pass


def test_a_full_window_keeps_the_stream_alive_with_empty_requests(monkeypatch):
    monkeypatch.setattr(streaming, "KEEPALIVE_S", 0.2)
    server = _SlowServer(hold=1.5)
    requests = requests_of(grpcclient, chunked(np.zeros(20 * 1600, np.float32), 100), 42, StreamOptions())
    assert list(segments_sync(server, STREAM_MODEL, requests, None)) == []
    chunks = [r for r in server.sent if r != KEEPALIVE_ID]
    assert chunks == [str(n) for n in range(21)]  # 20 chunks and END, each once, in order
    assert KEEPALIVE_ID in server.sent[MAX_UNANSWERED:server.sent.index(str(MAX_UNANSWERED))]  # while blocked
    assert server.most_unanswered == MAX_UNANSWERED  # the keep-alives took no place in the window
