"""The GPU build without a GPU: the merged HF checkpoint against the reference, the per-GPU presets, the exact
trtexec / TensorRT-LLM commands they resolve to, and clear failures where the pinned tools are missing."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from canary_trt.export import presets, tensorrt, trtllm
from canary_trt.export.hf_checkpoint import write_merged_hf_checkpoint
from canary_trt.export.presets import PRESETS, MissingToolError, audio_rows, get_preset

# trtexec --minShapes/--optShapes/--maxShapes for the H100 preset: 0.1 s, 20 s x 16 and 40 s x 32, in samples.
H100_PROFILE = ("WAV:1x1600,WAV_LENS:1", "WAV:16x320000,WAV_LENS:16", "WAV:32x640000,WAV_LENS:32")


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

    assert presets.PROMPT_TOKENS == len(asr_prompt_ids(reference.tokenizer))
    assert set(trtllm.QUANTIZATIONS) == set(presets.LLM_QUANTIZATIONS)


def test_h100_numbers():
    p = get_preset("h100")
    assert (p.max_samples, p.audio_rows) == (640000, 500)
    assert p.max_input_len == 64 - 1 + 500
    assert p.max_seq_len == p.max_input_len + 128
    assert p.max_prompt_embedding_table_size == 500 * p.llm_max_batch
    assert p.encoder_shapes() == {"WAV": ((1, 1600), (16, 320000), (32, 640000)), "WAV_LENS": ((1,), (16,), (32,))}


def _flags(command: list[str]) -> dict[str, str]:
    """trtexec's --name=value and trtllm-build's --name value, as one dict."""
    if "=" in command[1]:
        return dict(arg.removeprefix("--").partition("=")[::2] for arg in command[1:])
    return {name.removeprefix("--"): value for name, value in zip(command[1::2], command[2::2])}


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_resolves_its_commands(name, tmp_path):
    p = get_preset(name)
    trtexec = _flags(tensorrt.trtexec_command(tmp_path / "encoder.onnx", tmp_path / "encoder.plan", p))
    assert trtexec["onnx"] == str(tmp_path / "encoder.onnx") and trtexec["saveEngine"] == str(tmp_path / "encoder.plan")
    assert trtexec["maxShapes"] == f"WAV:{p.encoder_max_batch}x{p.max_samples},WAV_LENS:{p.encoder_max_batch}"
    assert trtexec["minShapes"] == "WAV:1x1600,WAV_LENS:1"
    assert trtexec["timingCacheFile"] == str(tmp_path / "encoder.timing.cache")
    assert trtexec["builderOptimizationLevel"] == "3" and trtexec["memPoolSize"] == f"workspace:{p.workspace_mib}M"
    assert {"skipInference", "fp16", "noTF32"} <= trtexec.keys() and trtexec["precisionConstraints"] == "obey"
    # No ONNX yet (dry run): the patterns.
    assert trtexec["layerPrecisions"] == "/frontend/*:fp32,*/LayerNormalization:fp32,*/Softmax:fp32"

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
        assert (trtexec["minShapes"], trtexec["optShapes"], trtexec["maxShapes"]) == H100_PROFILE


def test_quantized_and_bf16_variants(tmp_path):
    fp8 = get_preset("h100", llm_quantization="fp8", encoder_precision="bf16")
    build = _flags(trtllm.build_command(tmp_path / "c", tmp_path / "e", fp8))
    assert (build["gemm_plugin"], build["use_fp8_context_fmha"]) == ("fp8", "enable")
    convert = trtllm.convert_command(tmp_path / "hf", tmp_path / "c", fp8, calib_dataset="/data/calib")
    assert convert[-4:] == ["--quantization", "fp8", "--calib-dataset", "/data/calib"]
    trtexec = _flags(tensorrt.trtexec_command(tmp_path / "x.onnx", tmp_path / "x.plan", fp8))
    assert "bf16" in trtexec and "fp16" not in trtexec and trtexec["layerPrecisions"] == "/frontend/*:fp32"
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


def _onnx(path: Path, nodes: list[tuple[str, str]]) -> Path:
    """A graph with only the node names and op types that matter here."""
    import onnx
    from onnx import TensorProto, helper

    graph_nodes, previous = [], "WAV"
    for i, (op, name) in enumerate(nodes):
        graph_nodes.append(helper.make_node(op, [previous], [f"t{i}"], name=name))
        previous = f"t{i}"
    graph = helper.make_graph(graph_nodes, "g", [helper.make_tensor_value_info("WAV", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, 4])])  # fmt: skip
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_fp32_layers_read_from_the_onnx_file(tmp_path):
    nodes = [
        ("Relu", "/frontend/Relu"),
        ("Softmax", "/frontend/Softmax"),  # covered by /frontend/*, not listed again
        ("LayerNormalization", "/encoder/layers.0/norm_out/LayerNormalization"),
        ("Softmax", "/encoder/layers.0/self_attn/Softmax"),
        ("LayerNormalization", "/encoder/layers.1/norm_out/LayerNormalization_1"),
    ]
    path = _onnx(tmp_path / "encoder.onnx", nodes)
    assert tensorrt.fp32_layers(path, "fp16") == ["/frontend/*"] + [
        "/encoder/layers.0/norm_out/LayerNormalization", "/encoder/layers.1/norm_out/LayerNormalization_1",
        "/encoder/layers.0/self_attn/Softmax",
    ]  # fmt: skip
    assert tensorrt.fp32_layers(path, "bf16") == ["/frontend/*"]
    command = tensorrt.trtexec_command(path, tmp_path / "encoder.plan", get_preset("l40s"))
    assert "/encoder/layers.1/norm_out/LayerNormalization_1:fp32" in _flags(command)["layerPrecisions"]

    with pytest.raises(ValueError, match="/frontend/"):
        tensorrt.fp32_layers(_onnx(tmp_path / "no_frontend.onnx", nodes[2:]), "fp16")
    with pytest.raises(ValueError, match="no LayerNormalization"):
        tensorrt.fp32_layers(_onnx(tmp_path / "no_norm.onnx", nodes[:2] + nodes[3:4]), "fp16")
    with pytest.raises(ValueError, match="cannot address"):  # "," separates trtexec's layer specs
        tensorrt.fp32_layers(_onnx(tmp_path / "comma.onnx", nodes[:2] + [("LayerNormalization", "a,b")]), "fp16")


def _trtexec_matches(pattern: str, name: str) -> bool:
    """trtexec's matchStringWithOneWildcard (TensorRT 10.14 samples/common/sampleUtils.cpp)."""
    prefix, star, suffix = pattern.partition("*")
    if not star:
        return name == pattern
    return len(name) >= len(prefix + suffix) and name.startswith(prefix) and name.endswith(suffix)


@pytest.mark.slow
def test_fp32_layers_of_the_real_encoder_graph(tiny_checkpoint, tmp_path):
    encoder_onnx = pytest.importorskip("canary_trt.export.encoder_onnx")
    path = encoder_onnx.export_encoder_onnx(tiny_checkpoint, tmp_path)
    layers = tensorrt.fp32_layers(path, "fp16")
    n_layers = tiny_checkpoint.config["perception"]["encoder"]["n_layers"]
    assert layers[0] == "/frontend/*" and len(layers) == 1 + n_layers * (5 + 1)  # 5 LayerNorms + 1 Softmax each
    # The dry run's patterns pin exactly the same nodes.
    import onnx

    names = [node.name for node in onnx.load(str(path), load_external_data=False).graph.node]
    patterns = tensorrt.fp32_layers(tmp_path / "not-exported.onnx", "fp16")

    def pinned(pins):
        return {name for name in names if any(_trtexec_matches(pin, name) for pin in pins)}

    assert pinned(patterns) == pinned(layers)


@pytest.fixture
def no_gpu_tools(monkeypatch, tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt_llm") is not None:
        pytest.skip("tensorrt_llm is installed here")
    monkeypatch.setenv("PATH", str(tmp_path))  # no trtexec, no trtllm-build


def test_builds_fail_at_once_without_the_gpu_stack(no_gpu_tools, tmp_path):
    p = get_preset("h100")
    calls = {
        "`trtexec`": lambda: tensorrt.build_encoder_engine(tmp_path / "missing.onnx", tmp_path / "e.plan", p),
        "`tensorrt_llm`": lambda: trtllm.convert_llm_checkpoint(tmp_path / "hf", tmp_path / "ckpt", p),
        "`trtllm-build`": lambda: trtllm.build_llm_engine(tmp_path / "ckpt", tmp_path / "engine", p),
        "`trtexec`, first": presets.require_gpu_stack,
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
    from canary_trt.manifest import read_manifest

    out, quiet = tmp_path / "build", lambda line: None
    with pytest.raises(FileNotFoundError, match="--stage prepare"):
        export(tiny_checkpoint.path, out, "gpu", stage="engines", log=quiet)

    steps = export(tiny_checkpoint.path, out, "gpu", stage="prepare", log=quiet)
    assert [s.title.split(" (")[0] for s in steps] == [
        "encoder ONNX", "merged HF Qwen3 checkpoint", "tokenizer", "manifest", "Triton model repository"]
    assert (out / "encoder.onnx").is_file() and (out / "hf_llm" / "config.json").is_file()
    assert (out / "model_repository" / "decoder" / "config.pbtxt").is_file()
    assert read_manifest(out)["preset"] == "h100"

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
