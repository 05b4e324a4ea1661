"""Live, on CPU: `canary_qwen_long` on two minutes of real speech joined with pauses (pocketsphinx-testdata, built
as tests/test_longform_segmenter.py builds it). The served segments are exactly the segmenter's on the same audio
with the served options, each segment's tokens are exactly canary_qwen's own answer on that slice with that
budget, the chunks reached canary_qwen together (batched); up to 40 s the audio goes whole, as one segment;
no speech gives no segments; bad audio, a bad PROMPT and an over-long recording are refused by name; a failed
chunk fails the request, naming it."""

import shutil

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from canary_trt.client.stats import statistics_delta
from canary_trt.contract import MIN_SAMPLES, Budgets
from canary_trt.export.repository import write_model_repository
from canary_trt.export_info import read_export_info
from canary_trt.longform import SegmenterOptions, segment, served_options
from canary_trt.server import TritonServer
from test_bad_input import serving  # noqa: F401 (a fixture: canary_trt.serving against a stand-in stub module)
from test_longform_segmenter import clips, join  # noqa: F401 (clips: the recordings, a fixture)

LONG, ENSEMBLE = "canary_qwen_long", "canary_qwen"
MS = 16  # samples per millisecond
SEGMENTS = ("SEGMENT_START_MS", "SEGMENT_END_MS", "SEGMENT_TEXT", "SEGMENT_TOKEN_IDS", "SEGMENT_TOKEN_COUNTS", "SEGMENT_TRUNCATED")


# --- without a server -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("max_new_tokens", "max_audio_seconds", "chunk_s", "lookahead_ms"), [
    (128, 40, 14.0, 7000),  # the default build: (128 - 16) / 8 tokens per second
    (256, 40, 30.0, 10000),  # the segmenter's defaults
    (400, 20, 20.0, 10000),  # never past the build's audio budget
    (24, 40, 5.228, 2614),  # too small for any allowed chunk: the shortest allowed, budgets capped at 24
])  # fmt: skip
def test_chunk_length_follows_the_builds_budget(max_new_tokens, max_audio_seconds, chunk_s, lookahead_ms):
    budgets = Budgets(max_audio_seconds=max_audio_seconds, max_new_tokens=max_new_tokens)
    options = served_options.for_build(budgets)
    assert (options.max_chunk_s, options.max_lookahead_ms, options.max_new_tokens) == (chunk_s, lookahead_ms, max_new_tokens)
    uncapped = SegmenterOptions().token_budget  # what a chunk of that length would ask for: it fits the build
    assert uncapped(options.max_chunk_ms) <= max_new_tokens or max_new_tokens < 58
    if chunk_s == 14.0:
        assert uncapped(14_001) > max_new_tokens  # and it is the longest that does
    parameters = {**served_options.to_parameters(options), "build_dir": "/b", "max_chunks_in_flight": "32"}
    assert "neg_threshold" not in parameters and served_options.from_parameters(parameters) == options


def test_async_helpers_answer_every_request_once(serving):  # noqa: F811
    import asyncio

    triton = serving.triton

    async def handle(request):
        if request == "bad":
            raise triton.BadRequest("no good")
        if request == "bug":
            raise KeyError("bug")
        return {"OUT": np.array([[1]])}

    responses = asyncio.run(triton.guarded_async("m", ["ok", "bad", "bug"], lambda batch: triton.per_request_async(batch, handle, "m")))
    assert [r.error for r in responses] == [None, "no good", "m: internal error: KeyError: 'bug'"]
    assert [getattr(r.error, "code", None) for r in responses] == [None, "INVALID_ARG", None]

    async def crash(batch):
        raise RuntimeError("lost")

    assert [r.error for r in asyncio.run(triton.guarded_async("m", [1, 2], crash))] == ["m: internal error: RuntimeError: lost"] * 2


# --- live ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as triton:
        yield triton


@pytest.fixture(scope="module")
def recording(clips) -> np.ndarray:  # noqa: F811
    """~2 minutes: the 14 recordings twice, shuffled, after pauses merged within a chunk or always skipped."""
    rng = np.random.default_rng(7)
    order = [i for _ in range(2) for i in rng.permutation(len(clips))]
    gaps = [1000] + [int(rng.choice([450, 600, 800, 1200, 2500, 4000], p=[0.25, 0.25, 0.2, 0.1, 0.1, 0.1]))
                     for _ in order[1:]]  # fmt: skip
    audio = join([clips[i] for i in order], gaps, seed=1).audio
    assert 110 < audio.size / 16000 < 130
    return audio


def inputs(wav, prompt=None, max_new=None) -> list:
    wav = np.asarray(wav, dtype=np.float32)[None]
    values = {"WAV": wav, "WAV_LENS": np.array([[wav.shape[1]]], dtype=np.int32)}
    if prompt is not None:
        values["PROMPT"] = np.array([[prompt.encode("utf-8")]], dtype=object)
    if max_new is not None:
        values["MAX_NEW_TOKENS"] = np.array([[max_new]], dtype=np.int32)
    out = []
    for name, value in values.items():
        tensor = grpcclient.InferInput(name, list(value.shape), {"WAV": "FP32", "PROMPT": "BYTES"}.get(name, "INT32"))
        tensor.set_data_from_numpy(value)
        out.append(tensor)
    return out


def long_form(client, wav, **kw) -> dict[str, np.ndarray]:
    result = client.infer(LONG, inputs(wav, **kw))
    out = {name: result.as_numpy(name) for name in ("TRANSCRIPT", *SEGMENTS)}
    assert all(value.shape[0] == 1 for value in out.values())
    return {name: value[0] for name, value in out.items()}


def direct(client, wav, **kw) -> tuple[bytes, list[int]]:
    result = client.infer(ENSEMBLE, inputs(wav, **kw))
    return result.as_numpy("TRANSCRIPT")[0, 0], result.as_numpy("TOKEN_IDS")[0].tolist()


def refused(client, wav, **kw) -> str:
    with pytest.raises(InferenceServerException) as info:
        client.infer(LONG, inputs(wav, **kw))
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
    return info.value.message()


def per_segment(out) -> list[list[int]]:
    ends = np.cumsum(out["SEGMENT_TOKEN_COUNTS"])
    return [ids.tolist() for ids in np.split(out["SEGMENT_TOKEN_IDS"], ends[:-1])] if ends.size else []


@pytest.fixture(scope="module")
def budgets(cpu_build) -> Budgets:
    return Budgets.from_manifest(read_export_info(cpu_build))


@pytest.fixture(scope="module")
def options(client, budgets):
    """The options the model serves, read back from its config as the model reads them: the export's choice."""
    config = client.get_model_config(LONG, as_json=True)["config"]
    served = served_options.from_parameters({k: v["string_value"] for k, v in config["parameters"].items()})
    assert served == served_options.for_build(budgets)
    assert (budgets.max_new_tokens, served.max_chunk_s, served.max_lookahead_ms) == (128, 14.0, 7000)
    return served


@pytest.fixture(scope="module")
def answer(client, recording):
    """The recording through canary_qwen_long, with what the server's models did meanwhile."""
    before = client.get_inference_statistics(as_json=True)
    out = long_form(client, recording)
    return out, statistics_delta(before, client.get_inference_statistics(as_json=True))


def test_segments_are_the_segmenters(answer, recording, options):
    out, _ = answer
    chunks = segment(recording, options)
    assert len(chunks) >= 8
    assert out["SEGMENT_START_MS"].tolist() == [c.start_ms for c in chunks]
    assert out["SEGMENT_END_MS"].tolist() == [c.end_ms for c in chunks]
    counts = out["SEGMENT_TOKEN_COUNTS"].tolist()
    assert len(out["SEGMENT_TEXT"]) == len(counts) == len(chunks) and sum(counts) == out["SEGMENT_TOKEN_IDS"].size
    # random weights rarely say <|im_end|>: chunks use their whole budget, and are flagged
    assert out["SEGMENT_TRUNCATED"].tolist() == [n == c.max_new_tokens for n, c in zip(counts, chunks)]
    assert out["SEGMENT_TRUNCATED"].any()


def test_each_segment_is_canary_qwens_answer_on_its_slice(answer, client, recording, options):
    out, _ = answer
    for start, end, text, ids in zip(out["SEGMENT_START_MS"], out["SEGMENT_END_MS"], out["SEGMENT_TEXT"], per_segment(out)):
        piece = recording[start * MS : end * MS]
        assert piece.size >= MIN_SAMPLES  # no chunk here needed the padding to the minimum
        assert direct(client, piece, max_new=options.token_budget(end - start)) == (text, ids), f"{start}-{end} ms"
    assert out["TRANSCRIPT"][0] == b" ".join(t for t in out["SEGMENT_TEXT"] if t)


def test_each_chunk_is_one_canary_qwen_request(answer):
    """Every chunk went once through each step behind the ensemble. (Whether they met in one batch no longer
    shows in execution counts: the CPU models wait for no batch and the decoder batches in flight.)"""
    out, delta = answer
    chunks = len(out["SEGMENT_START_MS"])
    assert delta[LONG]["inference_count"] == 1 and delta[ENSEMBLE]["inference_count"] == chunks
    for model in ("encoder", "decoder"):
        assert delta[model]["inference_count"] == chunks, model


def test_up_to_40_seconds_goes_whole(client, recording, budgets):
    """One segment covering every sample (the end rounded up to whole ms), the tokens of a direct request."""
    clip = recording[: 20 * 16000 + 5]
    out = long_form(client, clip)
    assert out["SEGMENT_START_MS"].tolist() == [0] and out["SEGMENT_END_MS"].tolist() == [20001]
    text, ids = direct(client, clip)
    assert (out["TRANSCRIPT"][0], out["SEGMENT_TEXT"].tolist(), out["SEGMENT_TOKEN_IDS"].tolist()) == (text, [text], ids)
    assert out["SEGMENT_TOKEN_COUNTS"].tolist() == [len(ids)]
    assert out["SEGMENT_TRUNCATED"].tolist() == [len(ids) == budgets.max_new_tokens]
    prompt = "Transcribe the following in English:"  # the request's PROMPT goes along
    assert long_form(client, clip, prompt=prompt)["SEGMENT_TOKEN_IDS"].tolist() == direct(client, clip, prompt=prompt)[1]


def test_no_speech_gives_no_segments(client):
    """Longer than 40 s, so the VAD runs; it finds no speech in a -60 dBFS noise floor: not an error."""
    noise = np.random.default_rng(3).standard_normal(50 * 16000).astype(np.float32) * np.float32(1e-3)
    out = long_form(client, noise)
    assert out["TRANSCRIPT"].tolist() == [b""]
    assert all(out[name].shape == (0,) for name in SEGMENTS)


@pytest.mark.parametrize(("make", "words"), [
    (lambda n: np.zeros(n), "all zeros (silence)"),
    (lambda n: np.where(np.arange(n) == 7, np.nan, 0.1), "non-finite samples"),
    (lambda n: np.ones(100), "too short"),
])  # fmt: skip
def test_bad_audio_is_refused_as_audio_check_refuses_it(client, make, words):
    message = refused(client, make(50 * 16000))
    assert words in message, message


def test_a_bad_prompt_is_refused_before_any_chunk_is_sent(client, recording):
    """With the adapter's own words and code (a BLS error reaches this model without its code on Triton 2.51)."""
    before = client.get_inference_statistics(model_name=ENSEMBLE, as_json=True)
    message = refused(client, recording, prompt="   ")
    assert "PROMPT is empty" in message, message
    delta = statistics_delta(before, client.get_inference_statistics(model_name=ENSEMBLE, as_json=True))
    assert delta[ENSEMBLE]["inference_count"] == 0


# A stand-in for the ensemble that fails every request the way a step fails (INTERNAL), for the failure path.
FAILING_ENSEMBLE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError("decoder: internal error: boom")) for _ in requests]
"""
FAILING_CONFIG = """name: "canary_qwen"
backend: "python"
max_batch_size: 1
input [
  { name: "WAV" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "WAV_LENS" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "PROMPT" data_type: TYPE_STRING dims: [ 1 ] optional: true },
  { name: "MAX_NEW_TOKENS" data_type: TYPE_INT32 dims: [ 1 ] optional: true }
]
output [
  { name: "TRANSCRIPT" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "TOKEN_IDS" data_type: TYPE_INT32 dims: [ -1 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


@pytest.fixture(scope="module")
def small_server(cpu_build, tmp_path_factory):
    """canary_qwen_long with a 60-s limit, over a canary_qwen that always fails: two light models, a quick start."""
    repo = write_model_repository(cpu_build, read_export_info(cpu_build), out=tmp_path_factory.mktemp("long") / "repo",
                                  overrides={"max_long_audio_seconds": 60})  # fmt: skip
    for model in repo.iterdir():
        if model.name != LONG:
            shutil.rmtree(model)
    (repo / ENSEMBLE / "1").mkdir(parents=True)
    (repo / ENSEMBLE / "1" / "model.py").write_text(FAILING_ENSEMBLE, encoding="utf-8")
    (repo / ENSEMBLE / "config.pbtxt").write_text(FAILING_CONFIG, encoding="utf-8")
    with TritonServer(repo) as server, grpcclient.InferenceServerClient(server.grpc_url) as triton:
        yield triton


def test_longer_than_max_long_audio_seconds_is_refused(small_server):
    message = refused(small_server, np.full(61 * 16000, 0.1))
    assert "audio too long" in message and "the maximum is 60 s" in message, message


def test_a_failed_chunk_fails_the_request_naming_it(small_server, recording, options):
    """Every chunk fails: the request fails once, as the server's fault, naming the first chunk and why."""
    audio = recording[: 59 * 16000]
    first = segment(audio, options)[0]
    with pytest.raises(InferenceServerException) as info:
        small_server.infer(LONG, inputs(audio))
    message = info.value.message()
    assert info.value.status() == "StatusCode.INTERNAL", message
    assert f"ChunkFailed: chunk {first.start_ms}-{first.end_ms} ms: decoder: internal error: boom" in message, message
    assert small_server.is_server_ready()
