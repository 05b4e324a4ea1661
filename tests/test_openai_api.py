"""Live: `canary-trt api` (the OpenAI-compatible front, run as its own process) before the real tritonserver
on CPU, called with the official `openai` package and with raw HTTP.

The front must give the same text as `canary-trt-client transcribe` for every LibriVox clip, in each
response format, and every error in OpenAI's shape with the status code the official client maps to its
exception types. Long uploads: a ~60-s FLAC goes to canary_qwen_long, its verbose_json segments are the gRPC
client's, srt and vtt parse back; one whose header declares 3 hours is refused before it is decoded."""

import concurrent.futures
import json
import os
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
import srt
import webvtt

from canary_trt.client import TranscriptionClient
from canary_trt.client.cli import main as client_main
from canary_trt.client.subtitles import cue_text
from canary_trt.contract import LIBRIVOX_DIR
from canary_trt.openai_api.process import ApiProcess
from canary_trt.server import free_ports

MAX_NEW = 12
SERVED = "canary-qwen-2.5b"
CLIPS = sorted(LIBRIVOX_DIR.glob("*.wav"))
ERROR_KEYS = {"message", "type", "param", "code"}


class Front(ApiProcess):
    """A started `canary-trt api` (same token limit as the reference calls) with callers for the tests."""

    def __init__(self, triton_url: str, *options: str, env: dict | None = None):
        super().__init__(triton_url, "--max-new-tokens", str(MAX_NEW), *options, env=env)
        self.start()

    def openai(self, api_key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0)  # retries would hide codes

    def post(self, files=None, data=None, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/audio/transcriptions", files=files, data=data, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def front(server):
    running = Front(server.grpc_url, "--model-alias", "whisper-1")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client_texts(server) -> dict[str, str]:
    """What `canary-trt-client transcribe --json` says for each clip, with the same token limit."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert client_main(["transcribe", "--json", "--url", server.grpc_url, "--max-new-tokens", str(MAX_NEW),
                            *map(str, CLIPS)]) == 0  # fmt: skip
    return {Path(row["audio"]).name: row["text"] for row in json.loads(out.getvalue())}


def assert_openai_error(response: httpx.Response, status: int, *phrases: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    error = body["error"]
    assert error["type"] == ("server_error" if status >= 500 else "requests" if status == 429 else "invalid_request_error")
    for phrase in phrases:
        assert phrase in error["message"], error
    if param:
        assert error["param"] == param, error
    return error


def test_openai_client_gives_the_same_text_as_canary_trt_client(front, client_texts):
    assert len(CLIPS) == 5
    client = front.openai()
    for path in CLIPS:
        want = client_texts[path.name]
        assert want  # random weights still generate text
        with open(path, "rb") as f:
            assert client.audio.transcriptions.create(model=SERVED, file=f).text == want
        with open(path, "rb") as f:
            assert client.audio.transcriptions.create(model=SERVED, file=f, response_format="text") == want
        verbose = client.audio.transcriptions.create(model="whisper-1", file=path, response_format="verbose_json",
                                                     language="en", temperature=0.0)  # fmt: skip
        assert (verbose.text, verbose.language) == (want, "english")
        assert verbose.duration == pytest.approx(sf.info(path).duration, abs=1e-3)
        assert verbose.words is None  # no word timings: not invented
        (segment,) = verbose.segments  # a short clip: one segment over the whole of it
        assert (segment.id, segment.seek, segment.start, segment.text) == (0, 0, 0.0, want)
        assert segment.end == pytest.approx(verbose.duration, abs=1e-3)


def test_formats_over_raw_http_and_mp3(front, client_texts, tmp_path):
    path = CLIPS[0]
    want = client_texts[path.name]
    answer = front.post(files={"file": (path.name, path.read_bytes())}, data={"model": SERVED})
    assert answer.json() == {"text": want}
    answer = front.post(files={"file": (path.name, path.read_bytes())}, data={"model": SERVED, "response_format": "text"})
    assert (answer.text, answer.headers["content-type"].split(";")[0]) == (want, "text/plain")
    mp3 = tmp_path / "clip.mp3"
    samples, rate = sf.read(path)
    sf.write(mp3, samples, rate, format="MP3")
    with open(mp3, "rb") as f:
        assert front.openai().audio.transcriptions.create(model=SERVED, file=f).text  # lossy: other text, but read


def test_models_and_health(front):
    client = front.openai()
    assert [m.id for m in client.models.list()] == [SERVED, "whisper-1"]
    assert client.models.retrieve(SERVED).owned_by == "nvidia"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o-transcribe")
    health = httpx.get(f"{front.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def _silence(tmp_path: Path) -> Path:
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    return path


def _three_hours(tmp_path: Path) -> Path:
    """A FLAC whose header declares 3 h (over --max-audio-seconds' 7200): digital silence at 8 kHz, ~270 kB."""
    path = tmp_path / "three_hours.flac"
    with sf.SoundFile(path, "w", 8000, 1, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros(8000 * 600, np.int16)
        for _ in range(18):
            f.write(block)
    return path


def _not_audio(tmp_path: Path) -> Path:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 100)
    return path


def _huge(tmp_path: Path) -> Path:
    path = tmp_path / "huge.wav"
    path.write_bytes(os.urandom(26 * 2**20))  # over OpenAI's (and the default) 25 MiB
    return path


CASES = [
    # (file maker, form options, status, openai exception, phrases in the message, param)
    (None, {"language": "de"}, 400, openai.BadRequestError, ["English only"], "language"),
    (None, {"response_format": "tsv"}, 400, openai.BadRequestError, ["'tsv' is not supported", "srt, vtt"], "response_format"),
    (None, {"temperature": 1.5}, 400, openai.BadRequestError, ["temperature must be a number between 0 and 1"], "temperature"),
    (_silence, {}, 400, openai.BadRequestError, ["audio is all zeros (silence)"], "file"),
    (_three_hours, {}, 400, openai.BadRequestError, ["3:00:00", "10800.0 s", "7200 s limit", "before decoding"], "file"),
    (None, {"model": "gpt-4o-transcribe"}, 404, openai.NotFoundError, ["'gpt-4o-transcribe' does not exist"], "model"),
    (_huge, {}, 413, openai.APIStatusError, ["limited to 26214400 bytes (25 MiB)"], "file"),
    (_not_audio, {}, 415, openai.APIStatusError, ["'notes.wav'", "cannot decode audio", "supported: wav, flac"], "file"),
]  # fmt: skip


@pytest.mark.parametrize("make, options, status, exception, phrases, param", CASES,
                         ids=[f"{c[2]}-{c[5]}-{i}" for i, c in enumerate(CASES)])  # fmt: skip
def test_each_error_through_the_openai_client_and_raw_http(front, tmp_path, make, options, status, exception, phrases,
                                                           param):  # fmt: skip
    path = make(tmp_path) if make else CLIPS[0]
    form = {"model": SERVED, **options}
    assert_openai_error(front.post(files={"file": (path.name, path.read_bytes())}, data=form), status, *phrases,
                        param=param)  # fmt: skip
    with pytest.raises(exception) as info, open(path, "rb") as f:
        front.openai().audio.transcriptions.create(file=f, **form)
    assert info.value.status_code == status and isinstance(info.value.body, dict)
    assert all(phrase in info.value.body["message"] for phrase in phrases), info.value.body
    assert httpx.get(f"{front.url}/health").status_code == 200  # still serving


@pytest.fixture(scope="module")
def long_flac(tmp_path_factory) -> Path:
    """The 5 LibriVox clips twice, each after 1 s of -60 dBFS noise, and 1 s more: ~60 s, as FLAC."""
    clips = [sf.read(path, dtype="float32")[0] for path in CLIPS]
    pause = np.zeros(16000, np.float32)
    audio = np.concatenate([piece for clip in clips * 2 for piece in (pause, clip)] + [pause])
    audio += np.random.default_rng(5).standard_normal(audio.size).astype(np.float32) * np.float32(1e-3)
    assert 55 < audio.size / 16000 < 65
    path = tmp_path_factory.mktemp("long") / "long.flac"
    sf.write(path, audio, 16000)
    return path


def test_a_long_upload_is_transcribed_with_the_clients_segments(server, front, long_flac):
    with TranscriptionClient(server.grpc_url) as client:
        want = client.transcribe(str(long_flac))  # over 40 s: canary_qwen_long by itself
    assert len(want.segments) > 1
    answer = front.post(files={"file": (long_flac.name, long_flac.read_bytes())},
                        data={"model": SERVED, "response_format": "verbose_json", "timestamp_granularities[]": "segment"})
    assert answer.status_code == 200, answer.text
    verbose = answer.json()
    assert verbose["text"] == want.text and "words" not in verbose
    assert verbose["duration"] == pytest.approx(want.audio_seconds, abs=1e-3)
    assert [(s["id"], s["seek"], s["start"], s["end"], s["text"], s["tokens"]) for s in verbose["segments"]] == \
        [(i, round(s.start_s * 100), s.start_s, s.end_s, s.text, s.token_ids) for i, s in enumerate(want.segments)]
    for segment in verbose["segments"]:
        assert segment["temperature"] == 0.0
        assert segment["avg_logprob"] is segment["compression_ratio"] is segment["no_speech_prob"] is None
    cues = [(s.start_s, s.end_s, cue_text(s)) for s in want.segments if cue_text(s)]
    client = front.openai()
    with open(long_flac, "rb") as f:
        subtitles = client.audio.transcriptions.create(model=SERVED, file=f, response_format="srt")
    parsed = list(srt.parse(subtitles))
    assert [(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in parsed] == \
        [(pytest.approx(a, abs=1e-3), pytest.approx(b, abs=1e-3), t) for a, b, t in cues]  # fmt: skip
    with open(long_flac, "rb") as f:
        subtitles = client.audio.transcriptions.create(model=SERVED, file=f, response_format="vtt")
    captions = webvtt.from_string(subtitles).captions
    assert [(c.start_in_seconds + int(c.start[-3:]) / 1000, c.end_in_seconds + int(c.end[-3:]) / 1000, c.text)
            for c in captions] == [(pytest.approx(a, abs=1e-3), pytest.approx(b, abs=1e-3), t) for a, b, t in cues]


def test_a_declared_three_hours_is_refused_before_decoding(front, tmp_path):
    path = _three_hours(tmp_path)
    audio = path.read_bytes()
    assert len(audio) < 2**20
    start = time.perf_counter()
    answer = front.post(files={"file": (path.name, audio)}, data={"model": SERVED, "response_format": "verbose_json"})
    took = time.perf_counter() - start
    error = assert_openai_error(answer, 400, "3:00:00 long (10800.0 s, from its header)", "--max-audio-seconds",
                                param="file")  # fmt: skip
    assert error["code"] == "audio_too_long" and took < 2.0, took


def test_word_timestamps_are_refused_by_name(front):
    client = front.openai()
    for granularities in (["word"], ["segment", "word"]):
        with pytest.raises(openai.BadRequestError) as info, open(CLIPS[0], "rb") as f:
            client.audio.transcriptions.create(model=SERVED, file=f, response_format="verbose_json",
                                               timestamp_granularities=granularities)  # fmt: skip
        assert "'word' is not supported" in info.value.body["message"]
        assert info.value.body["param"] == "timestamp_granularities[]"
    with pytest.raises(openai.BadRequestError) as info, open(CLIPS[0], "rb") as f:
        client.audio.transcriptions.create(model=SERVED, file=f, response_format="json", timestamp_granularities=["segment"])
    assert "requires response_format=verbose_json" in info.value.body["message"]
    with open(CLIPS[0], "rb") as f:
        verbose = client.audio.transcriptions.create(model=SERVED, file=f, response_format="verbose_json",
                                                     timestamp_granularities=["segment"])  # fmt: skip
    assert len(verbose.segments) == 1


def test_malformed_requests_over_raw_http(front):
    audio = CLIPS[0].read_bytes()
    assert_openai_error(front.post(data={"model": SERVED}), 400, "multipart/form-data")  # no file at all: not multipart
    assert_openai_error(front.post(files={"other": ("a.wav", audio)}, data={"model": SERVED}), 400, "'file'", param="file")
    assert_openai_error(front.post(files={"file": ("a.wav", audio)}), 400, "missing required parameter 'model'", param="model")
    assert_openai_error(front.post(files={"file": ("a.wav", audio)}, data={"model": SERVED, "stream": "yes"}), 400,
                        "stream must be true or false", param="stream")  # fmt: skip
    assert_openai_error(front.post(files={"file": ("a.wav", audio)}, data={"model": SERVED, "timestamp_granularities[]": "word"}),
                        400, "timestamps", param="timestamp_granularities[]")  # fmt: skip
    assert_openai_error(front.post(files=[("file", ("a.wav", audio)), ("file", ("b.wav", audio))], data={"model": SERVED}),
                        400, "files")  # fmt: skip
    assert_openai_error(httpx.get(f"{front.url}/v1/audio/transcriptions"), 405, "Method Not Allowed")
    assert_openai_error(httpx.get(f"{front.url}/v1/nothing"), 404, "Not Found")


@pytest.fixture
def black_hole():
    """A TCP port that accepts connections (the kernel's backlog) and never answers: a stuck Triton."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener


@pytest.mark.slow  # waits out a request timeout against a server that never answers
def test_429_when_the_in_flight_limit_and_its_queue_are_full(black_hole):
    host, port = black_hole.getsockname()
    front = Front(f"{host}:{port}", "--max-in-flight", "1", "--max-queue", "1", "--timeout", "3")
    try:
        audio = {"file": ("a.wav", CLIPS[0].read_bytes())}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            stuck = [pool.submit(front.post, files=audio, data={"model": SERVED}) for _ in range(2)]
            time.sleep(1.5)  # one in flight at the stuck server, one waiting for its slot
            assert_openai_error(front.post(files=audio, data={"model": SERVED}), 429, "too many requests")
            with pytest.raises(openai.RateLimitError) as info, open(CLIPS[0], "rb") as f:
                front.openai().audio.transcriptions.create(model=SERVED, file=f)
            assert info.value.response.headers["retry-after"] == "1"
            # Neither admitted request is lost: each is answered once Triton's deadline passes (504).
            for future in stuck:
                assert_openai_error(future.result(), 504, "did not answer in time")
        assert front.post(files=audio, data={"model": SERVED}).status_code == 504  # room again: admitted
    finally:
        front.stop()


def test_503_when_triton_is_unreachable_and_401_without_the_key():
    front = Front(f"127.0.0.1:{free_ports('127.0.0.1', None)[0]}", "--api-key-env", "FRONT_KEY", env={"FRONT_KEY": "s3cret"})
    try:
        assert_openai_error(httpx.get(f"{front.url}/health"), 503, "unreachable")
        audio = {"file": ("a.wav", CLIPS[0].read_bytes())}
        assert_openai_error(front.post(files=audio, data={"model": SERVED}), 401, "API key")
        with pytest.raises(openai.AuthenticationError):
            front.openai("wrong").models.list()
        headers = {"Authorization": "Bearer s3cret"}
        assert_openai_error(front.post(files=audio, data={"model": SERVED}, headers=headers), 503, "unavailable")
        with pytest.raises(openai.InternalServerError) as info, open(CLIPS[0], "rb") as f:
            front.openai("s3cret").audio.transcriptions.create(model=SERVED, file=f)
        assert info.value.status_code == 503 and info.value.body["code"] == "triton_unavailable"
    finally:
        front.stop()


def test_with_a_key_the_front_refuses_a_missing_or_wrong_one_and_serves_the_right_one(server, client_texts):
    """--api-key-env before a live Triton: 401s in OpenAI's shape (the official client's AuthenticationError),
    the right key transcribes as the gRPC client does, and /health (the probes' path) needs no key."""
    front = Front(server.grpc_url, "--api-key-env", "FRONT_KEY", env={"FRONT_KEY": "the-right-key"})
    try:
        assert httpx.get(f"{front.url}/health").status_code == 200
        audio = {"file": (CLIPS[0].name, CLIPS[0].read_bytes())}
        missing = assert_openai_error(front.post(files=audio, data={"model": SERVED}), 401, "API key")
        wrong = assert_openai_error(front.post(files=audio, data={"model": SERVED},
                                               headers={"Authorization": "Bearer the-wrong-key"}), 401, "API key")  # fmt: skip
        assert (missing["code"], wrong["code"]) == (None, "invalid_api_key")
        with pytest.raises(openai.AuthenticationError), open(CLIPS[0], "rb") as f:
            front.openai("the-wrong-key").audio.transcriptions.create(model=SERVED, file=f)
        with open(CLIPS[0], "rb") as f:
            text = front.openai("the-right-key").audio.transcriptions.create(model=SERVED, file=f).text
        assert text == client_texts[CLIPS[0].name]
    finally:
        front.stop()


def test_a_dead_replica_among_the_triton_urls_costs_no_request(server, client_texts):
    """--triton-url with an unreachable replica first: every request is answered by the live one."""
    dead = f"127.0.0.1:{free_ports('127.0.0.1', None)[0]}"
    front = Front(f"{dead},{server.grpc_url}")
    try:
        client = front.openai()
        for path in CLIPS:
            with open(path, "rb") as f:
                assert client.audio.transcriptions.create(model=SERVED, file=f).text == client_texts[path.name]
    finally:
        front.stop()


def test_prompt_is_ignored_unless_asked_for(server, front, client_texts):
    """By default OpenAI's `prompt` (context for Whisper) is accepted and ignored; with
    --prompt-as-instruction it replaces the model's instruction, as `canary-trt-client --prompt` does."""
    path, instruction = CLIPS[1], "Write down what is said:"
    with open(path, "rb") as f:
        assert front.openai().audio.transcriptions.create(model=SERVED, file=f, prompt=instruction).text == \
            client_texts[path.name]  # fmt: skip
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        client_main(["transcribe", "--json", "--url", server.grpc_url, "--max-new-tokens", str(MAX_NEW),
                     "--prompt", instruction, str(path)])  # fmt: skip
    (want,) = json.loads(out.getvalue())
    instructed = Front(server.grpc_url, "--prompt-as-instruction")
    try:
        with open(path, "rb") as f:
            got = instructed.openai().audio.transcriptions.create(model=SERVED, file=f, prompt=instruction).text
        assert got == want["text"] != client_texts[path.name]
    finally:
        instructed.stop()


def test_triton_overload_is_429_and_other_failures_map_to_their_codes():
    from tritonclient.utils import InferenceServerException

    from canary_trt.audio import AudioError
    from canary_trt.client.retry import RetriesExhausted
    from canary_trt.openai_api.errors import from_transcription_failure

    def code(status, message):
        return from_transcription_failure(InferenceServerException(message, status=status), "t:1", "a.wav").status

    assert code("StatusCode.UNAVAILABLE", "Exceeds maximum queue size") == 429
    assert code("StatusCode.UNAVAILABLE", "failed to connect to all addresses") == 503
    unreachable = InferenceServerException("failed to connect", status="StatusCode.UNAVAILABLE")
    assert from_transcription_failure(RetriesExhausted(1, unreachable), "t:1", "a.wav").status == 503
    assert code("StatusCode.INVALID_ARGUMENT", "audio too short") == 400
    assert code("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded") == 504
    assert code("StatusCode.INTERNAL", "encoder: internal error: boom") == 500
    assert from_transcription_failure(AudioError("x"), "t:1", "a.wav").status == 415
