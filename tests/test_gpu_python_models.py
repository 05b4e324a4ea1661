"""The GPU flavour's python models (audio_check, adapter, detokenizer) with the serving container's own
packages, on the real bundled tritonserver, without the container or a GPU.

In nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3 this package is installed --no-deps
(deploy/Dockerfile.gpu), so those models import whatever numpy, tokenizers and transformers TensorRT-LLM
brought. Here a venv of exactly those versions (pyproject.toml, extra gpu-container, the one place they are
written) plus this package (editable, --no-deps) is built once under .venv-gpu-models, rebuilt when the
pins change, and named by each model's EXECUTION_ENV_PATH: the python stub runs the models in it. The
models are those of a dry-run GPU export of the tiny checkpoint (tokenizer, export.json, configs; the
TensorRT encoder, TensorRT-LLM decoder and the ensemble around them are left out). adapter and
detokenizer also run a second time from the main venv, and both must answer alike.

Not covered: the container's Python is 3.12 (the stub bundled here is 3.11's), and its numpy is its own
build of that version.
"""

import fcntl
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # builds a venv and starts a server

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-gpu-models"
LOCK = ROOT / ".venv-gpu-models.lock"
PINS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]["gpu-container"]
GPU_MODELS = ("audio_check", "adapter", "detokenizer")
TWINS = ("adapter", "detokenizer")  # also served from the main venv, for comparison
SERVING_MODULES = ("audio_check", "adapter", "detokenizer", "encoder", "decoder", "long_form")
HEAVY = ("torch", "transformers")

PROBE = '''
import importlib.metadata, json, sys

import numpy as np
import tokenizers
import triton_python_backend_utils as pb_utils

import canary_trt
import canary_trt.serving.adapter, canary_trt.serving.audio_check, canary_trt.serving.detokenizer


class TritonPythonModel:
    def execute(self, requests):
        report = {"prefix": sys.prefix, "numpy": np.__version__, "tokenizers": tokenizers.__version__,
                  "installed": {p.split("==")[0]: importlib.metadata.version(p.split("==")[0]) for p in PINS},
                  "canary_trt": canary_trt.__file__, "heavy": [m for m in HEAVY if m in sys.modules]}
        out = np.array([json.dumps(report).encode()], dtype=object)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("REPORT", out)]) for _ in requests]
'''
PROBE_CONFIG = """name: "probe"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "REPORT" data_type: TYPE_STRING dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def _run(command: list, what: str) -> str:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"{what} failed ({result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
    return result.stdout


def container_venv() -> Path:
    """.venv-gpu-models: the pins + this package, built under a lock when missing or made for other pins."""
    recipe = json.dumps({"pins": PINS, "python": sys.version, "package": f"-e {ROOT} --no-deps"}, indent=1)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building it
        stamp = VENV / "recipe.json"
        if stamp.is_file() and stamp.read_text() == recipe and (VENV / "bin" / "python").exists():
            return VENV
        start = time.perf_counter()
        shutil.rmtree(VENV, ignore_errors=True)
        # From the interpreter behind this venv: the stub embeds its libpython (canary_trt/server.py).
        _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", VENV], "creating the venv")
        python = VENV / "bin" / "python"
        _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS], "installing the pins")
        _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "-e", ROOT],
             "installing canary-trt --no-deps")  # fmt: skip
        stamp.write_text(recipe)
        print(f"built {VENV} in {time.perf_counter() - start:.1f} s: {', '.join(PINS)}")
    return VENV


@pytest.fixture(scope="module")
def venv() -> Path:
    return container_venv()


@pytest.fixture(scope="module")
def gpu_build(tiny_checkpoint, tmp_path_factory) -> Path:
    """`canary-trt export --target gpu --dry-run`: the cheap steps only (tokenizer, export.json, configs)."""
    from canary_trt.export.build import export

    out = tmp_path_factory.mktemp("build-gpu-dry")
    export(tiny_checkpoint.path, out, target="gpu", dry_run=True, log=lambda line: None)
    return out


def _env_parameter(prefix) -> str:
    return f'parameters {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{prefix}" }} }}'


@pytest.fixture(scope="module")
def repository(gpu_build, venv, tmp_path_factory) -> Path:
    """The GPU configs of the three python models, run in the container venv; twins in the main venv; a probe."""
    from canary_trt.export.repository import write_model_repository
    from canary_trt.export_info import read_export_info

    repo = tmp_path_factory.mktemp("gpu-python-models") / "model_repository"
    write_model_repository(gpu_build, read_export_info(gpu_build), overrides={"python_env": _env_parameter(venv)}, out=repo)
    for model in repo.iterdir():
        if model.name not in GPU_MODELS:  # encoder (TensorRT), decoder (TensorRT-LLM), the ensemble
            shutil.rmtree(model)
    for name in TWINS:
        twin = repo / f"{name}_main_venv"
        shutil.copytree(repo / name, twin)
        config = (twin / "config.pbtxt").read_text(encoding="utf-8")
        config = config.replace(f'name: "{name}"', f'name: "{twin.name}"', 1).replace(_env_parameter(venv), _env_parameter(sys.prefix))
        (twin / "config.pbtxt").write_text(config, encoding="utf-8")
    (repo / "probe" / "1").mkdir(parents=True)
    (repo / "probe" / "1" / "model.py").write_text(f"PINS = {PINS!r}\nHEAVY = {HEAVY!r}\n{PROBE}", encoding="utf-8")
    (repo / "probe" / "config.pbtxt").write_text(PROBE_CONFIG + _env_parameter(venv) + "\n", encoding="utf-8")
    assert sorted(p.name for p in repo.iterdir()) == sorted([*GPU_MODELS, *(f"{n}_main_venv" for n in TWINS), "probe"])
    return repo


@pytest.fixture(scope="module")
def client(repository):
    import tritonclient.grpc as grpcclient

    from canary_trt.server import TritonServer

    start = time.perf_counter()
    with TritonServer(repository) as server, grpcclient.InferenceServerClient(server.grpc_url) as triton:
        print(f"tritonserver with {len(list(repository.iterdir()))} python models up in {time.perf_counter() - start:.1f} s")
        yield triton


@pytest.fixture(scope="module")
def tokenizer(gpu_build):
    from canary_trt.export_info import read_export_info
    from canary_trt.tokenizer import load_tokenizer

    return load_tokenizer(gpu_build / read_export_info(gpu_build)["tokenizer"])


def _input(name, value):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    value = np.asarray(value)
    tensor = grpcclient.InferInput(name, list(value.shape), "BYTES" if value.dtype == object else np_to_triton_dtype(value.dtype))
    tensor.set_data_from_numpy(value)
    return tensor


def infer(client, model, **inputs) -> dict[str, np.ndarray]:
    result = client.infer(model, [_input(name, value) for name, value in inputs.items()])
    return {output.name: result.as_numpy(output.name) for output in result.get_response().outputs}


def refused(client, model, **inputs) -> str:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        infer(client, model, **inputs)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
    return info.value.message()


# --- the environment --------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", SERVING_MODULES)
def test_serving_model_imports_neither_torch_nor_transformers(module):
    """Here both are installed, so an import of either anywhere in the model's chain would show."""
    code = (
        "import sys, types\n"
        "sys.modules['triton_python_backend_utils'] = types.ModuleType('triton_python_backend_utils')\n"
        f"import canary_trt.serving.{module}\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    assert _run([sys.executable, "-c", code], f"importing canary_trt.serving.{module}").strip() == ""


def test_container_venv_has_exactly_the_pins(venv):
    code = "import importlib.metadata as md, sys; print(*[md.version(p.split('==')[0]) for p in sys.argv[1:]])"
    assert _run([venv / "bin" / "python", "-c", code, *PINS], "reading versions").split() == [p.split("==")[1] for p in PINS]
    no_torch = subprocess.run([venv / "bin" / "python", "-c", "import torch"], capture_output=True)
    assert no_torch.returncode != 0  # torch is not among the pins: the models must not need it


def test_dockerfile_checks_the_container_against_the_pins(venv):
    """Dockerfile.gpu's version check, run here: passes in the container venv, stops the build elsewhere."""
    dockerfile = (ROOT / "deploy" / "Dockerfile.gpu").read_text(encoding="utf-8")
    check = re.search(r"&& python3 -c '([^']+)'", dockerfile).group(1).replace("/src/pyproject.toml", str(ROOT / "pyproject.toml"))
    passed = subprocess.run([venv / "bin" / "python", "-c", check], capture_output=True, text=True)
    assert passed.returncode == 0 and passed.stdout.split() == ["python", "models", "tested", "with", *PINS], passed.stderr
    if all(importlib.metadata.version(p.split("==")[0]) == p.split("==")[1] for p in PINS):
        pytest.skip("the main venv has the pins too")
    failed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert failed.returncode != 0 and "untested versions:" in failed.stderr and "gpu-container" in failed.stderr


# --- the served models ------------------------------------------------------------------------------------
def test_models_run_in_the_container_venv(client, venv):
    report = json.loads(infer(client, "probe", IN=np.zeros(1, dtype=np.int32))["REPORT"][0])
    assert Path(report["prefix"]) == venv
    assert report["installed"] == {p.split("==")[0]: p.split("==")[1] for p in PINS}
    assert (report["numpy"], report["tokenizers"]) == (report["installed"]["numpy"], report["installed"]["tokenizers"])
    assert Path(report["canary_trt"]).is_relative_to(ROOT / "canary_trt")  # this checkout, installed --no-deps
    assert report["heavy"] == []  # the three serving modules loaded: no torch, no transformers


def test_audio_check_passes_good_audio(client):
    samples = 16000
    wav = (0.1 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 16000)).astype(np.float32)[None]
    out = infer(client, "audio_check", WAV=wav, WAV_LENS=np.array([[samples]], dtype=np.int32))
    assert np.array_equal(out["checked_wav_lens"], [[samples]])
    checked = out["checked_wav"]
    assert checked.dtype == np.float32 and np.array_equal(checked[:, :samples], wav)
    assert not checked[:, samples:].any()  # any length bucket pads with zeros


@pytest.mark.parametrize(
    ("wav", "length", "words"),
    [(np.zeros(16000), 16000, "silence"), (np.full(16000, np.nan), 16000, "non-finite"),
     (np.ones(100), 100, "too short"), (np.ones(16000), 0, "empty")],  # fmt: skip
)
def test_audio_check_refuses_bad_audio(client, wav, length, words):
    message = refused(client, "audio_check", WAV=np.asarray(wav, dtype=np.float32)[None], WAV_LENS=np.array([[length]], dtype=np.int32))
    assert words in message


def test_adapter_builds_the_decoder_request(client, tokenizer, gpu_build):
    from canary_trt.decoding import splice_fake_ids
    from canary_trt.export_info import read_export_info
    from canary_trt.tokenizer import asr_prompt_ids, eos_id, pad_id, placeholder_id

    manifest = read_export_info(gpu_build)
    rows = 7
    embeddings = np.random.default_rng(0).standard_normal((1, rows, manifest["hidden_size"])).astype(np.float32)
    requests = {
        "default prompt": {},
        "own prompt": {"PROMPT": np.array([["Transcribe the following in Polish:".encode()]], dtype=object),
                       "MAX_NEW_TOKENS": np.array([[5]], dtype=np.int32)},
    }  # fmt: skip
    for what, extra in requests.items():
        inputs = dict(audio_embeddings=embeddings, audio_lengths=np.array([[rows]], dtype=np.int32), **extra)
        out, twin = infer(client, "adapter", **inputs), infer(client, "adapter_main_venv", **inputs)
        assert out.keys() == twin.keys() and all(np.array_equal(out[k], twin[k]) for k in out), what
        instruction = extra["PROMPT"][0, 0].decode() if "PROMPT" in extra else None
        prompt = asr_prompt_ids(tokenizer, *([instruction] if instruction else []))
        expected = splice_fake_ids(prompt, placeholder_id(tokenizer), rows, manifest["vocab_size"])
        assert np.array_equal(out["input_ids"], [expected]) and out["input_ids"].dtype == np.int32, what
        assert np.array_equal(out["input_lengths"], [[len(expected)]])
        assert np.array_equal(out["end_id"], [[eos_id(tokenizer)]]) and np.array_equal(out["pad_id"], [[pad_id(tokenizer)]])
        assert out["prompt_embedding_table"].dtype == np.float16
        assert np.array_equal(out["prompt_embedding_table"], embeddings.astype(np.float16))
        assert np.array_equal(out["prompt_vocab_size"], [[rows]])
        if "MAX_NEW_TOKENS" in extra:
            assert np.array_equal(out["request_output_len"], [[5]])
    empty = np.array([[b"   "]], dtype=object)
    message = refused(client, "adapter", audio_embeddings=embeddings, audio_lengths=np.array([[rows]], dtype=np.int32), PROMPT=empty)
    assert "PROMPT is empty" in message


def test_detokenizer_returns_the_text(client, tokenizer):
    from canary_trt.tokenizer import eos_id, pad_id

    text = "Hello world, this is Canary: 1234 naïve €."
    ids = tokenizer.encode(text)
    generated = np.array([[[*ids, eos_id(tokenizer), pad_id(tokenizer), pad_id(tokenizer)]]], dtype=np.int32)
    inputs = dict(output_ids=generated, sequence_length=np.array([[generated.shape[-1]]], dtype=np.int32))
    out, twin = infer(client, "detokenizer", **inputs), infer(client, "detokenizer_main_venv", **inputs)
    assert out.keys() == twin.keys() and all(np.array_equal(out[k], twin[k]) for k in out)
    assert out["TRANSCRIPT"][0, 0].decode("utf-8") == text
    assert np.array_equal(out["TOKEN_IDS"], [ids])  # cut at the end-of-turn id
