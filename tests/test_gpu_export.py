"""The GPU build without a GPU: the merged HF checkpoint against the reference, the per-GPU presets, the exact
encoder-engine / TensorRT-LLM commands they resolve to, and clear failures where the pinned tools are missing."""

import json
import subprocess
import sys
import time

import pytest
import torch

from canary_trt.export import presets, tensorrt, trtllm
from canary_trt.export.hf_checkpoint import write_merged_hf_checkpoint
from canary_trt.contract import PROMPT_TOKENS, audio_rows
from canary_trt.export.presets import PRESETS, MissingToolError, get_preset

# The encoder engine's optimization profile (min, opt, max) for the H100 preset: 0.1 s, 20 s x 16 and 40 s x 32.
H100_PROFILE = {"WAV": ((1, 1600), (16, 320000), (32, 640000)), "WAV_LENS": ((1,), (16,), (32,))}


@pytest.fixture(scope="module")
def merged(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint's LLM as HF directories in float32 and float16, from one read of the weights."""
    weights = tiny_checkpoint.read_weights()
    root = tmp_path_factory.mktemp("hf")
    return {dtype: write_merged_hf_checkpoint(tiny_checkpoint, root / dtype, dtype, weights)
            for dtype in ("float32", "float16")}  # fmt: skip


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


@pytest.fixture(scope="module")
def greedy(reference):
    """The ASR prompt (placeholder embedded as id 0, as the splice does) + 24 greedy tokens of the reference
    LLM, and the reference's logits over that sequence."""
    from transformers import GenerationConfig

    from canary_trt.tokenizer import asr_prompt_ids

    prompt = torch.tensor([[0 if i == reference.placeholder_id else i for i in asr_prompt_ids(reference.tokenizer)]])
    config = GenerationConfig(bos_token_id=None, eos_token_id=None, pad_token_id=reference.pad_id, do_sample=False,
                              max_new_tokens=24)  # fmt: skip
    with torch.inference_mode():
        sequence = reference.llm.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)
    return sequence, prompt.shape[1], _logits(reference.llm, sequence)


def _load(directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()


def test_merged_float32_checkpoint_is_the_reference(merged, greedy):
    sequence, prompt_len, expected = greedy
    model = _load(merged["float32"])
    assert model.dtype == torch.float32
    got = _logits(model, sequence)
    print(f"float32: max |logit diff| vs reference {(got - expected).abs().max().item():.3g}")
    assert torch.allclose(got, expected, rtol=0, atol=1e-5)
    assert torch.equal(got.argmax(-1)[:, prompt_len - 1 : -1], sequence[:, prompt_len:])  # it decodes the same tokens


def test_merged_float16_checkpoint_is_close(tiny_checkpoint, merged, greedy):
    from safetensors import safe_open

    from canary_trt.checkpoint import merged_llm_weights

    expected_tensors = merged_llm_weights(tiny_checkpoint.read_weights(), tiny_checkpoint.lora_scale, torch.float16)
    with safe_open(merged["float16"] / "model.safetensors", framework="pt") as f:
        assert set(f.keys()) == expected_tensors.keys() | {"lm_head.weight"}
        assert all(torch.equal(f.get_tensor(k), v) for k, v in expected_tensors.items())  # bit for bit

    sequence, prompt_len, expected = greedy
    model = _load(merged["float16"])
    assert model.dtype == torch.float16  # config.json's dtype is honoured
    got = _logits(model, sequence)
    diff = (got - expected).abs().max().item()
    print(f"float16: max |logit diff| vs float32 reference {diff:.3g} (logits up to {expected.abs().max().item():.3g})")
    assert diff < 0.05
    # The random model has near ties (top-2 gaps < 1e-3) that FP16 rounding may flip; every clear decision holds.
    top2 = expected.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * diff
    assert clear.sum() >= clear.numel() // 2
    assert torch.equal(got.argmax(-1)[clear], expected.argmax(-1)[clear])


def test_merged_checkpoint_layout(merged, reference):
    from safetensors import safe_open

    from canary_trt.tokenizer import asr_prompt_ids, load_tokenizer

    out = merged["float16"]
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["torch_dtype"] == config["dtype"] == "float16"
    with safe_open(out / "model.safetensors", framework="pt") as f:
        head, embedding = f.get_tensor("lm_head.weight"), f.get_tensor("model.embed_tokens.weight")
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert torch.equal(head, embedding)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["do_sample"] is False and generation["eos_token_id"] == reference.eos_id
    tokenizer = load_tokenizer(out)
    assert asr_prompt_ids(tokenizer) == asr_prompt_ids(reference.tokenizer)


def test_merged_checkpoint_rejects_unknown_dtype(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="float16, bfloat16, float32"):
        write_merged_hf_checkpoint(tiny_checkpoint, tmp_path, "int8", weights={})


def test_audio_rows_match_the_encoder(reference):
    """The preset arithmetic against NeMo's own preprocessor + encoder lengths."""
    samples = [1600, 16000, 16159, 16160, 17000, 23999]
    embeddings = reference.embed_audio([torch.zeros(n).numpy() for n in samples])
    assert [audio_rows(n) for n in samples] == [len(e) for e in embeddings]
    assert audio_rows(640000) == 500


def test_preset_constants_match_the_reference(reference):
    from canary_trt.tokenizer import asr_prompt_ids

    assert PROMPT_TOKENS == len(asr_prompt_ids(reference.tokenizer))
    assert set(trtllm.QUANTIZATIONS) == set(presets.LLM_QUANTIZATIONS)


def test_h100_numbers():
    p = get_preset("h100")
    assert (p.max_samples, p.audio_rows) == (640000, 500)
    assert p.max_input_len == 64 - 1 + 500
    assert p.max_seq_len == p.max_input_len + 128
    assert p.max_prompt_embedding_table_size == 500 * p.llm_max_batch
    assert p.encoder_shapes() == {"WAV": ((1, 1600), (16, 320000), (32, 640000)), "WAV_LENS": ((1,), (16,), (32,))}


def _flags(command: list[str]) -> dict[str, str]:
    """A command's --name value pairs (after its program), as one dict; also --name=value."""
    if "=" in command[1]:
        return dict(arg.removeprefix("--").partition("=")[::2] for arg in command[1:])
    return {name.removeprefix("--"): value for name, value in zip(command[1::2], command[2::2])}


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_resolves_its_commands(name, tmp_path):
    p = get_preset(name)
    # The encoder engine: TensorRT's Python API in a child process (its builder settings and FP32 pins:
    # tests/test_tensorrt_engine.py), which rebuilds this preset's profile from the preset's name.
    encoder = tensorrt.build_command(tmp_path / "encoder.onnx", tmp_path / "encoder.plan", p)
    assert encoder[:3] == [sys.executable, "-m", "canary_trt.export.tensorrt"]
    assert _flags(encoder[2:]) == {"onnx": str(tmp_path / "encoder.onnx"), "engine": str(tmp_path / "encoder.plan"),
                                   "preset": name, "precision": "fp16",
                                   "timing-cache": str(tmp_path / "encoder.timing.cache")}  # fmt: skip
    profile = p.encoder_shapes()
    assert profile["WAV"][2] == (p.encoder_max_batch, p.max_samples) and profile["WAV_LENS"][2] == (p.encoder_max_batch,)
    assert (profile["WAV"][0], profile["WAV_LENS"][0]) == ((1, 1600), (1,))

    convert = trtllm.convert_command(tmp_path / "hf", tmp_path / "ckpt", p)
    assert convert[:3] == [sys.executable, "-m", "canary_trt.export.trtllm"] and "--calib-dataset" not in convert
    build = trtllm.build_command(tmp_path / "ckpt", tmp_path / "engine", p)
    assert build[0] == "trtllm-build"
    assert _flags(build) == {
        "checkpoint_dir": str(tmp_path / "ckpt"), "output_dir": str(tmp_path / "engine"),
        "gemm_plugin": "auto", "gpt_attention_plugin": "auto", "kv_cache_type": "paged",
        "remove_input_padding": "enable", "context_fmha": "enable", "use_paged_context_fmha": "enable",
        "use_fp8_context_fmha": "disable", "max_beam_width": "1",
        "max_batch_size": str(p.llm_max_batch), "max_input_len": str(p.max_input_len),
        "max_seq_len": str(p.max_input_len + 128), "max_num_tokens": str(p.max_num_tokens),
        "max_prompt_embedding_table_size": str(500 * p.llm_max_batch),
    }  # fmt: skip
    if name == "h100":
        assert profile == H100_PROFILE


def test_quantized_and_bf16_variants(tmp_path):
    fp8 = get_preset("h100", llm_quantization="fp8", encoder_precision="bf16")
    build = _flags(trtllm.build_command(tmp_path / "c", tmp_path / "e", fp8))
    assert (build["gemm_plugin"], build["use_fp8_context_fmha"]) == ("fp8", "enable")
    convert = trtllm.convert_command(tmp_path / "hf", tmp_path / "c", fp8, calib_dataset="/data/calib")
    assert convert[-4:] == ["--quantization", "fp8", "--calib-dataset", "/data/calib"]
    assert _flags(tensorrt.build_command(tmp_path / "x.onnx", tmp_path / "x.plan", fp8)[2:])["precision"] == "bf16"
    int8 = _flags(trtllm.build_command(tmp_path / "c", tmp_path / "e", get_preset("a100", llm_quantization="int8_wo")))
    assert int8["gemm_plugin"] == "auto"


def test_bad_presets_and_overrides():
    with pytest.raises(ValueError) as error:
        get_preset("rtx4090")
    assert all(name in str(error.value) for name in ("rtx5090", "rtx-pro-6000", "l40s", "a100", "h100"))
    with pytest.raises(ValueError, match="fp8 needs compute capability"):
        get_preset("a100", llm_quantization="fp8")
    with pytest.raises(ValueError, match="cannot override sm"):
        get_preset("a100", sm=90)
    with pytest.raises(ValueError, match="encoder_precision"):
        get_preset("l40s", encoder_precision="int8")
    with pytest.raises(ValueError, match="max_num_tokens"):
        get_preset("l40s", max_audio_seconds=900)  # 11250 rows: one prompt no longer fits a step


# The FP32 pins (front end, LayerNorm, Softmax) are chosen from the parsed network, no longer from the ONNX file:
# tests/test_tensorrt_engine.py checks them on plain layer lists and on the real encoder graph.


@pytest.fixture
def no_gpu_tools(monkeypatch, tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt_llm") is not None or importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt / tensorrt_llm is installed here")
    monkeypatch.setenv("PATH", str(tmp_path))  # no trtllm-build


def test_builds_fail_at_once_without_the_gpu_stack(no_gpu_tools, tmp_path):
    calls = {
        "`tensorrt`": lambda: presets.require_module("tensorrt"),
        "`tensorrt_llm`": lambda: presets.require_module("tensorrt_llm"),
        "`trtllm-build`": lambda: presets.require_executable("trtllm-build"),
        "`tensorrt`, first": presets.require_gpu_stack,
    }
    for tool, call in calls.items():
        start = time.perf_counter()
        with pytest.raises(MissingToolError) as error:
            call()
        assert time.perf_counter() - start < 1.0
        assert tool.split(",")[0] in str(error.value) and presets.TRITON_CONTAINER in str(error.value)
    assert not (tmp_path / "engine").exists() and not (tmp_path / "ckpt").exists()


def test_convert_entry_point_names_the_missing_module(no_gpu_tools, tmp_path):
    result = subprocess.run(trtllm.convert_command(tmp_path / "hf", tmp_path / "ckpt", get_preset("h100")),
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode != 0
    assert "`tensorrt_llm`" in result.stderr and presets.TRITON_CONTAINER in result.stderr


def test_two_stage_gpu_build_prepares_here_and_engines_build_on_it(no_gpu_tools, tiny_checkpoint, tmp_path):
    """--stage prepare runs on a machine without TensorRT (the Kubernetes export Job's CPU step); --stage
    engines needs that folder, made with the same options, and the pinned container's tools."""
    from canary_trt.export.build import export
    from canary_trt.export_info import read_export_info

    out, quiet = tmp_path / "build", lambda line: None
    with pytest.raises(FileNotFoundError, match="--stage prepare"):
        export(tiny_checkpoint.path, out, "gpu", stage="engines", log=quiet)

    steps = export(tiny_checkpoint.path, out, "gpu", stage="prepare", log=quiet)
    assert [s.title.split(" (")[0] for s in steps] == [
        "encoder ONNX", "merged HF Qwen3 checkpoint", "tokenizer", "manifest", "Triton model repository"]
    assert (out / "encoder.onnx").is_file() and (out / "hf_llm" / "config.json").is_file()
    assert (out / "model_repository" / "decoder" / "config.pbtxt").is_file()
    assert read_export_info(out)["preset"] == "h100"

    with pytest.raises(ValueError, match="prepared with {'preset': 'h100'}"):
        export(tiny_checkpoint.path, out, "gpu", preset="a100", stage="engines", log=quiet)
    with pytest.raises(MissingToolError):  # the right folder, but not the container: at once
        export(tiny_checkpoint.path, out, "gpu", stage="engines", log=quiet)
    planned = export(tiny_checkpoint.path, out, "gpu", stage="engines", dry_run=True, log=quiet)
    assert [s.title.split(" (")[0] for s in planned] == [
        "encoder TensorRT engine", "TensorRT-LLM checkpoint", "TensorRT-LLM engine"]
    with pytest.raises(ValueError, match="a CPU build has one stage"):
        export(tiny_checkpoint.path, out, "cpu", stage="prepare", log=quiet)


def test_without_nemo_only_the_engines_stage_runs(no_gpu_tools, tiny_checkpoint, tmp_path, monkeypatch):
    """As in the NGC container: `all` and `prepare` stop at once naming NeMo and the two-stage way."""
    from canary_trt.export.build import export

    monkeypatch.setitem(sys.modules, "nemo", None)  # not importable
    for stage in ("all", "prepare"):
        with pytest.raises(FileNotFoundError, match="needs NeMo.*--stage engines"):
            export(tiny_checkpoint.path, tmp_path, "gpu", stage=stage, log=lambda line: None)
    assert not any(tmp_path.iterdir())
