"""Live, on CPU: the clients' long-form path (`long_form=`, `Transcription.segments`) and `canary-trt-client
transcribe --format srt|vtt|json` against `canary_qwen_long` on the real tritonserver (tiny random checkpoint).

A ~70-s recording (the LibriVox clips joined with 1-s pauses of faint noise) goes to canary_qwen_long by itself
(over 40 s); the client's segments are exactly the server's raw SEGMENT_* outputs; the subtitles parse back
(srt.parse, webvtt) with the same times and texts; a short clip keeps its tokens and gets one segment."""

import asyncio
import dataclasses
import io

import numpy as np
import pytest
import soundfile as sf
import srt
import tritonclient.grpc as grpcclient
import webvtt

from canary_trt.client import AsyncTranscriptionClient, Segment, TranscriptionClient
from canary_trt.client.cli import main
from canary_trt.client.subtitles import cue_text
from canary_trt.contract import LONG_FORM_MODEL, MAX_AUDIO_SECONDS
from canary_trt.errors import InvalidInput

MS = 16
MAX_NEW = 8


@pytest.fixture(scope="module")
def recording(clips) -> np.ndarray:
    """The 5 LibriVox clips, twice, then the first 2 again, each after 1 s of -60 dBFS noise: ~70 s."""
    names = sorted(name for name in clips if name.isdigit())  # the 5 clips, not the cuts and joins
    parts = [clips[n] for n in names * 2 + names[:2]]
    pause = np.zeros(1000 * MS, np.float32)
    audio = np.concatenate([piece for part in parts for piece in (pause, part)] + [pause])
    audio += np.random.default_rng(5).standard_normal(audio.size).astype(np.float32) * np.float32(1e-3)
    assert 60 < audio.size / 16000 < 80
    return audio


@pytest.fixture(scope="module")
def raw(server, recording) -> dict[str, np.ndarray]:
    """canary_qwen_long's own answer, straight from tritonclient."""
    wav = recording[None]
    inputs = [grpcclient.InferInput("WAV", list(wav.shape), "FP32"), grpcclient.InferInput("WAV_LENS", [1, 1], "INT32")]
    inputs[0].set_data_from_numpy(wav)
    inputs[1].set_data_from_numpy(np.array([[wav.shape[1]]], dtype=np.int32))
    with grpcclient.InferenceServerClient(server.grpc_url) as triton:
        result = triton.infer(LONG_FORM_MODEL, inputs)
    names = ("TRANSCRIPT", "SEGMENT_START_MS", "SEGMENT_END_MS", "SEGMENT_TEXT", "SEGMENT_TOKEN_IDS",
             "SEGMENT_TOKEN_COUNTS", "SEGMENT_TRUNCATED")  # fmt: skip
    return {name: result.as_numpy(name)[0] for name in names}


@pytest.fixture(scope="module")
def long_result(server, recording):
    with TranscriptionClient(server.grpc_url) as client:
        return client.transcribe(recording, sample_rate=16000)  # over 40 s: long form by itself


def expected_segments(raw) -> list[Segment]:
    ends = np.cumsum(raw["SEGMENT_TOKEN_COUNTS"])
    ids = np.split(raw["SEGMENT_TOKEN_IDS"], ends[:-1]) if ends.size else []
    return [Segment(int(a) / 1000, int(b) / 1000, t.decode(), i.tolist(), bool(x))
            for a, b, t, i, x in zip(raw["SEGMENT_START_MS"], raw["SEGMENT_END_MS"], raw["SEGMENT_TEXT"], ids,
                                     raw["SEGMENT_TRUNCATED"], strict=True)]  # fmt: skip


def test_long_recording_segments_are_the_servers(long_result, raw, recording):
    want = expected_segments(raw)
    assert len(want) >= 5  # the VAD cut it: more than one chunk of at most 14 s
    assert long_result.segments == want
    assert long_result.text == raw["TRANSCRIPT"][0].decode()
    assert long_result.token_ids == raw["SEGMENT_TOKEN_IDS"].tolist()
    assert long_result.audio_seconds == pytest.approx(recording.size / 16000)
    assert all(0 <= s.start_s < s.end_s <= recording.size / 16000 + 1e-3 for s in want)


def test_async_client_and_long_form_flag(server, recording, long_result, clips):
    async def run():
        async with AsyncTranscriptionClient(server.grpc_url) as client:
            long = await client.transcribe(recording, sample_rate=16000)
            forced = await client.transcribe(clips["10s"], sample_rate=16000, long_form=True)
            with pytest.raises(InvalidInput, match="max_new_tokens"):
                await client.transcribe(recording, sample_rate=16000, max_new_tokens=MAX_NEW)
            return long, forced

    long, forced = asyncio.run(run())
    assert (long.segments, long.text, long.token_ids) == (long_result.segments, long_result.text, long_result.token_ids)
    # <= 40 s: the long model sends it whole, one segment [0, length]
    assert [(s.start_s, s.end_s) for s in forced.segments] == [(0.0, 10.0)]
    with TranscriptionClient(server.grpc_url) as client:
        direct = client.transcribe(clips["10s"], sample_rate=16000)  # the ensemble, its default budget
    assert forced.token_ids == direct.token_ids
    # the same segment; only the long model knows the budget it used (the ensemble's default is the server's)
    assert [dataclasses.replace(s, truncated=None) for s in forced.segments] == direct.segments
    assert direct.segments[0].truncated is None and forced.segments[0].truncated is True  # random weights: no end token


def test_short_clip_keeps_its_tokens_and_gets_one_segment(server, clips):
    clip = clips["0880"]
    wav = clip[None]
    inputs = [grpcclient.InferInput("WAV", list(wav.shape), "FP32"), grpcclient.InferInput("WAV_LENS", [1, 1], "INT32"),
              grpcclient.InferInput("MAX_NEW_TOKENS", [1, 1], "INT32")]  # fmt: skip
    for tensor, value in zip(inputs, (wav, np.array([[wav.shape[1]]], np.int32), np.array([[MAX_NEW]], np.int32))):
        tensor.set_data_from_numpy(value)
    with grpcclient.InferenceServerClient(server.grpc_url) as triton:
        result = triton.infer("canary_qwen", inputs)
    want_ids = result.as_numpy("TOKEN_IDS")[0].tolist()
    with TranscriptionClient(server.grpc_url) as client:
        got = client.transcribe(clip, sample_rate=16000, max_new_tokens=MAX_NEW)
    assert clip.size / 16000 < MAX_AUDIO_SECONDS
    assert (got.token_ids, got.text) == (want_ids, result.as_numpy("TRANSCRIPT")[0, 0].decode())
    (segment,) = got.segments
    assert segment == Segment(0.0, -(-clip.size // MS) / 1000, got.text, want_ids, len(want_ids) >= MAX_NEW)


def cues(segments) -> list[tuple[float, float, str]]:
    return [(s.start_s, s.end_s, cue_text(s)) for s in segments if cue_text(s)]


def test_cli_srt_and_vtt_parse_back(server, recording, clips, long_result, tmp_path, capsys):
    long_path, short_path = tmp_path / "long.wav", tmp_path / "short.flac"
    sf.write(long_path, recording, 16000, subtype="FLOAT")  # float: the samples the client sent above
    sf.write(short_path, clips["0880"], 16000, subtype="PCM_24")
    want = cues(long_result.segments)
    assert want
    base = ["transcribe", "--url", server.grpc_url]

    assert main([*base, "--format", "srt", str(long_path)]) == 0
    subtitles = list(srt.parse(capsys.readouterr().out))
    assert [(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subtitles] == want

    assert main([*base, "--format", "vtt", str(long_path)]) == 0
    captions = webvtt.from_string(capsys.readouterr().out).captions
    assert [(c.start_in_seconds + int(c.start[-3:]) / 1000, c.end_in_seconds + int(c.end[-3:]) / 1000, c.text)
            for c in captions] == want  # fmt: skip

    # several inputs: one file each, in --out-dir; without it, a usage error before any request
    assert main([*base, "--format", "vtt", str(long_path), str(short_path)]) == 2
    assert "--out-dir" in capsys.readouterr().err
    out = tmp_path / "subs"
    assert main([*base, "--format", "vtt", "--out-dir", str(out), str(long_path), str(short_path)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["long.vtt", "short.vtt"]
    with io.StringIO((out / "long.vtt").read_text()) as buffer:
        again = webvtt.from_buffer(buffer).captions
    assert [(c.start, c.end, c.text) for c in again] == [(c.start, c.end, c.text) for c in captions]
    (short,) = webvtt.read(str(out / "short.vtt")).captions
    assert short.start == "00:00:00.000"

    # --json (an alias of --format json) carries the segments
    import json

    assert main([*base, "--json", str(long_path)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert [Segment(**s) for s in row["segments"]] == long_result.segments


def test_bench_on_a_long_manifest(server, recording, clips, long_result, tmp_path):
    """A manifest with a long recording and a short clip: each goes the way the client sends it, the long one's
    row carries the same segments, the pass has an RTFx, and the report says how many were long."""
    from canary_trt.client.bench import run_benchmark
    from canary_trt.client.manifest import Utterance, read_manifest, write_manifest
    from canary_trt.client.report import markdown

    sf.write(tmp_path / "long.wav", recording, 16000, subtype="FLOAT")
    sf.write(tmp_path / "short.wav", clips["0880"], 16000, subtype="FLOAT")
    manifest = write_manifest(tmp_path / "set.jsonl", [Utterance(tmp_path / "long.wav", long_result.text),
                                                       Utterance(tmp_path / "short.wav", "a short clip")])
    report = run_benchmark(server.grpc_url, read_manifest(manifest), [2], warmup=0, out=tmp_path / "out")
    assert report["dataset"]["long_form_utterances"] == 1
    (bench,) = report["passes"]
    assert (bench["done"], bench["failed"]) == (2, 0) and bench["rtfx"] > 0
    long_row, short_row = bench["utterances"]
    assert (long_row["hypothesis"], long_row["token_ids"]) == (long_result.text, long_result.token_ids)
    assert [(s["start_s"], s["end_s"], s["text"], s["tokens"], s["truncated"]) for s in long_row["segments"]] == [
        (s.start_s, s.end_s, s.text, len(s.token_ids), s.truncated) for s in long_result.segments]  # fmt: skip
    assert long_row["word_errors"]["errors"] == 0  # its reference is the served text
    assert len(short_row["segments"]) == 1
    assert bench["segments"] == len(long_result.segments) + 1
    assert bench["truncated_segments"] is None  # the short clip used the ensemble's default budget: not known
    assert "1 of them long recordings" in markdown(report) and "canary_qwen_long" in markdown(report)
