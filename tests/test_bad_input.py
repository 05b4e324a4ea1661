"""Live, on CPU: every kind of bad input is rejected with an error that names the problem, the server
stays ready, and a valid request still succeeds afterwards. A bad request batched with good ones fails
alone; the good ones get their correct tokens. The load/unload API is refused."""

import concurrent.futures
import threading
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from canary_trt.contract import Budgets
from canary_trt.transcribe import transcribe

MAX_NEW = 6
RATE = 16000


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as triton:
        yield triton


@pytest.fixture(scope="module")
def expected(reference, clips):
    return {name: transcribe(reference, [clips[name]], max_new_tokens=MAX_NEW)[0].token_ids for name in ("1s", "0880", "0930")}


def _input(name, value, dtype):
    tensor = grpcclient.InferInput(name, list(value.shape), dtype)
    tensor.set_data_from_numpy(value)
    return tensor


def request(wav, lens=None, prompt=None, wav_dtype="FP32", max_new=MAX_NEW):
    """The ensemble's inputs, each overridable with something wrong."""
    wav = np.asarray(wav)
    wav = wav[None] if wav.ndim == 1 else wav
    lens = np.array([[wav.shape[-1]]], dtype=np.int32) if lens is None else np.asarray(lens, dtype=np.int32)
    inputs = [_input("WAV", wav, wav_dtype), _input("WAV_LENS", lens, "INT32"),
              _input("MAX_NEW_TOKENS", np.array([[max_new]], dtype=np.int32), "INT32")]  # fmt: skip
    if prompt is not None:
        inputs.append(_input("PROMPT", np.array([[prompt.encode("utf-8")]], dtype=object), "BYTES"))
    return inputs


def rejected(client, inputs) -> str:
    """The refusal's message; it must come as INVALID_ARGUMENT (the request's fault), not INTERNAL."""
    with pytest.raises(InferenceServerException) as info:
        client.infer("canary_qwen", inputs)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
    return info.value.message()


def still_serving(server, client, clips, expected):
    """The server is ready and a valid request gets the reference's tokens."""
    with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=5) as answer:
        assert answer.status == 200
    assert client.is_server_ready()
    result = client.infer("canary_qwen", request(clips["1s"]))
    assert result.as_numpy("TOKEN_IDS").reshape(-1).tolist() == expected["1s"]


@pytest.fixture
def check(server, client, clips, expected):
    """check(inputs, *phrases): rejected with every phrase in the message, then still serving."""

    def run(inputs, *phrases):
        message = rejected(client, inputs)
        print(f"rejected: {message}")
        for phrase in phrases:
            assert phrase in message, f"{phrase!r} not in {message!r}"
        still_serving(server, client, clips, expected)
        return message

    return run


def test_empty_audio(check):
    check(request(np.zeros(0, np.float32)), "audio is empty (0 samples)")


@pytest.mark.parametrize("samples", [1, 159, 1599])
def test_too_short_audio(check, clips, samples):
    check(request(clips["1s"][:samples]), f"audio too short: {samples} samples", "minimum is 0.1 s (1600 samples")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(check, clips, value):
    wav = clips["1s"].copy()
    wav[100:103] = value
    check(request(wav), "audio has 3 non-finite samples (NaN or Inf)")


def test_all_zero_audio(check):
    check(request(np.zeros(RATE, np.float32)), "audio is all zeros (silence)")


@pytest.mark.parametrize("dtype, triton_type", [(np.int16, "INT16"), (np.float64, "FP64")])
def test_wrong_dtype(check, clips, dtype, triton_type):
    # Triton's own type check answers before any model runs
    check(request(clips["1s"].astype(dtype), wav_dtype=triton_type), "WAV", triton_type)


def test_wav_3d(check, clips):
    check(request(clips["1s"][None, None]), "WAV")


def test_wav_lens_batch_mismatch(check, clips):
    check(request(clips["1s"], lens=[[RATE], [RATE]]), "WAV_LENS")


@pytest.mark.parametrize("length", [RATE + 1, -5])
def test_wav_lens_out_of_range(check, clips, length):
    check(request(clips["1s"], lens=[[length]]), f"WAV_LENS {length} out of range", f"the {RATE} samples sent in WAV")


def test_audio_over_the_maximum(check, clips):
    wav = np.concatenate([clips["35s"], clips["10s"]])[: 41 * RATE]
    check(request(wav), "audio too long: WAV has 656000 samples (41.00 s)", "maximum is 40 s (640000 samples")


def test_huge_request_30_minutes(check, clips):
    """30 min of audio (115 MB of FP32; Triton's and tritonclient's gRPC message caps are 2 GiB) is refused
    by the same length rule, and the server keeps serving."""
    wav = np.resize(clips["35s"], 30 * 60 * RATE)
    assert wav.nbytes > 100e6
    check(request(wav), "audio too long", "maximum is 40 s")


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_prompt_without_text(check, clips, prompt):
    check(request(clips["1s"], prompt=prompt), "PROMPT is empty")


def test_prompt_over_the_limit(check, clips):
    check(request(clips["1s"], prompt="Transcribe " * 200), "PROMPT too long: 2200 bytes", "limit is 2000 bytes")


def test_prompt_over_the_token_budget(check, clips):
    """Under the byte limit but longer than the prompt budget the engine is built for (export.json)."""
    check(request(clips["1s"], prompt="Transcribe this, " * 30), "PROMPT too long: the chat prompt is",
          "max_prompt_tokens is 64")  # fmt: skip


def test_max_new_tokens_over_the_budget(check, clips):
    check(request(clips["1s"], max_new=129), "MAX_NEW_TOKENS 129 is over this build's max_new_tokens 128")


def test_several_clips_in_one_request(check, clips):
    """One clip per request, as the GPU decoder requires: Triton refuses a batch of two at the ensemble,
    the same way in both flavours (clips go as separate requests and are batched by the server)."""
    two = np.stack([clips["1s"], clips["1s"]])
    inputs = [_input("WAV", two, "FP32"), _input("WAV_LENS", np.array([[RATE], [RATE]], np.int32), "INT32")]
    check(inputs, "batch-size must be <= 1", "canary_qwen")


def test_bad_request_in_a_batch_fails_alone(server, client, clips, expected):
    """One bad (NaN) and several good requests sent at once (the dynamic batcher merges them): the bad one gets
    its error, each good one its correct tokens."""
    nan = clips["0880"].copy()
    nan[5] = np.nan
    names = ["0880", "1s", "0930", "1s", "0880"]
    with grpcclient.InferenceServerClient(server.grpc_url) as other:
        with concurrent.futures.ThreadPoolExecutor(len(names) + 1) as pool:
            bad = pool.submit(rejected, other, request(nan))
            good = [pool.submit(client.infer, "canary_qwen", request(clips[n])) for n in names]
            assert "non-finite samples (NaN or Inf)" in bad.result()
            for name, future in zip(names, good):
                assert future.result().as_numpy("TOKEN_IDS").reshape(-1).tolist() == expected[name], name
    still_serving(server, client, clips, expected)


def test_model_control_is_refused(server, client, clips, expected):
    """--model-control-mode=none: no client can load or unload a model (nor point Triton at a path)."""
    for action in (lambda: client.load_model("encoder"), lambda: client.unload_model("encoder")):
        with pytest.raises(InferenceServerException) as info:
            action()
        assert "explicit model load / unload is not allowed" in info.value.message()
    still_serving(server, client, clips, expected)


def test_a_path_in_a_request_is_only_text(client, reference, clips):
    """Request data is never opened as a file: a PROMPT that names one is just an instruction."""
    prompt = "/etc/passwd"
    (want,) = transcribe(reference, [clips["1s"]], max_new_tokens=MAX_NEW, instruction=prompt)
    result = client.infer("canary_qwen", request(clips["1s"], prompt=prompt))
    assert result.as_numpy("TOKEN_IDS").reshape(-1).tolist() == want.token_ids


# --- error isolation inside `execute`, without a server: a fake triton_python_backend_utils ----------------
class _TritonError(str):
    """The stub's TritonError: a message and a status code (None: INTERNAL)."""

    INVALID_ARG = "INVALID_ARG"

    def __new__(cls, message, code=None):
        error = super().__new__(cls, message)
        error.code = code
        return error


class _Response:
    def __init__(self, output_tensors=None, error=None):
        self.outputs = {t.name: t.value for t in output_tensors or []}
        self.error = error


@pytest.fixture
def serving(monkeypatch):
    """canary_trt.serving imported against a stand-in for the stub's module."""
    import importlib
    import sys
    import types

    fake = types.ModuleType("triton_python_backend_utils")
    fake.TritonError = _TritonError
    fake.Tensor = lambda name, value: types.SimpleNamespace(name=name, value=value)
    fake.InferenceResponse = _Response
    fake.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    fake.get_input_tensor_by_name = lambda request, name: (
        None if name not in request else types.SimpleNamespace(as_numpy=lambda: request[name]))  # fmt: skip
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    for name in [m for m in sys.modules if m.startswith("canary_trt.serving")]:
        monkeypatch.delitem(sys.modules, name)
    yield types.SimpleNamespace(**{m: importlib.import_module(f"canary_trt.serving.{m}") for m in ("triton", "encoder", "decoder")})
    for name in [m for m in sys.modules if m.startswith("canary_trt.serving")]:
        del sys.modules[name]  # the real ones are imported afresh by whoever needs them


class _Failing:
    """ONNX Runtime failing in every session (the encoder's) and decoder (inflight.InflightBatcher's)."""

    vocab_size = 100

    def run(self, *args):
        raise RuntimeError("ONNX Runtime exploded")

    embed = run


class _Request(dict):
    """A decoder request: its tensors, and a response sender recording the one final response."""

    def __init__(self, tensors):
        super().__init__(tensors)
        self.final = threading.Event()
        self.response = None

    def get_response_sender(self):
        return self

    def send(self, response=None, flags=0):
        assert flags == 1 and self.response is None, "one final response per request"
        self.response = response
        self.final.set()


def _decode(serving, requests: list[dict]) -> list:
    """The CPU decoder's responses to `requests`, sent from its decoding thread, over a failing ONNX Runtime."""
    from canary_trt.inflight import InflightBatcher

    decoder = serving.decoder.TritonPythonModel()
    decoder.name, decoder.decoupled, decoder.decoder, decoder.budgets = "decoder", False, _Failing(), Budgets()
    decoder.batcher = InflightBatcher(decoder.decoder, max_rows=4)
    requests = [_Request(r) for r in requests]
    try:
        assert decoder.execute(requests) is None
        assert all(r.final.wait(30) for r in requests)
    finally:
        decoder.finalize()
    return [r.response for r in requests]


def _wav(samples):
    return {"WAV": samples[None].astype(np.float32), "WAV_LENS": np.array([[len(samples)]], np.int32)}


def test_an_onnx_runtime_failure_is_an_error_response_per_request(serving):
    encoder = serving.encoder.TritonPythonModel()
    encoder.session, encoder.max_seconds, encoder.max_samples = _Failing(), 40.0, 640000
    good = np.sin(np.arange(RATE, dtype=np.float32))
    responses = encoder.execute([_wav(good), _wav(np.zeros(RATE)), _wav(good)])
    assert [r.error for r in responses] == ["encoder: internal error: RuntimeError: ONNX Runtime exploded",
                                            "audio is all zeros (silence)",
                                            "encoder: internal error: RuntimeError: ONNX Runtime exploded"]  # fmt: skip
    assert [r.error.code for r in responses] == [None, "INVALID_ARG", None]  # the client's fault only in the middle

    ok = {"input_ids": np.array([[1, 2, 3]], np.int32), "input_lengths": np.array([3], np.int32),
          "request_output_len": np.array([4], np.int32), "end_id": np.array([5], np.int32)}  # fmt: skip
    responses = _decode(serving, [ok, {**ok, "input_ids": np.array([[1, 2, 300]], np.int32)}, ok])
    assert responses[0].error == responses[2].error == "decoder: internal error: RuntimeError: ONNX Runtime exploded"
    assert "outside the vocabulary" in responses[1].error


def test_the_cpu_decoder_holds_every_request_to_the_builds_budgets(serving):
    """Called directly (not through the adapter), the CPU decoder still refuses what the GPU engine could not
    hold, by name, so no request grows the KV cache past the build's max_seq_len; sampling is greedy only."""
    ok = {"input_ids": np.array([[1, 2, 3]], np.int32), "input_lengths": np.array([3], np.int32),
          "request_output_len": np.array([4], np.int32), "end_id": np.array([5], np.int32)}  # fmt: skip
    cases = {
        "request_output_len 129 is over this build's max_new_tokens 128": {"request_output_len": np.array([129], np.int32)},
        "input_lengths 564 is over this build's max_input_len 563": {"input_ids": np.ones((1, 564), np.int32),
                                                                    "input_lengths": np.array([564], np.int32)},
        "runtime_top_k 2: the CPU decoder decodes greedily": {"runtime_top_k": np.array([2], np.int32)},
    }  # fmt: skip
    responses = _decode(serving, [{**ok, **change} for change in cases.values()])
    assert [r.error for r in responses] == [r.error for r in responses if r.error.code == "INVALID_ARG"]
    for message, response in zip(cases, responses):
        assert message in response.error


def test_guarded_answers_every_request(serving):
    guarded = serving.triton.guarded

    def crash(requests):
        raise KeyError("bug")

    assert [r.error for r in guarded("m", [1, 2], crash)] == ["m: internal error: KeyError: 'bug'"] * 2
    short = guarded("m", [1, 2], lambda requests: [_Response(error="own")])
    assert [r.error for r in short] == ["own", "m: internal error: request left unanswered"]


def test_gpu_flavour_python_models_need_no_onnxruntime(serving, monkeypatch):
    """The ensemble's python models import no onnxruntime (the GPU image adds it only for the long-form VAD)."""
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # any import of it now fails
    for name in [m for m in sys.modules if m.startswith("canary_trt.serving") or m == "canary_trt.decoding"]:
        monkeypatch.delitem(sys.modules, name)
    for model in ("audio_check", "adapter", "detokenizer"):
        importlib.import_module(f"canary_trt.serving.{model}")
