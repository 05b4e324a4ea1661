"""The checkpoint layout: real key names, clear errors, pretrained_llm resolution, random checkpoints."""

import json
import math
import shutil

import huggingface_hub.constants
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from canary_trt.checkpoint import Checkpoint, CheckpointError, expected_shapes, resolve_llm
from canary_trt.random_checkpoint import configs


def _count(shapes, predicate):
    return sum(math.prod(shape) for key, shape in shapes.items() if predicate(key))


def test_full_layout_matches_the_published_model():
    """docs/MODEL.md#checkpoint-layout: 1686 bf16 tensors + 32 int64, and the published parameter counts."""
    shapes = expected_shapes(*configs("full"))
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert len(shapes) == 1718
    assert sum(k.endswith("num_batches_tracked") for k in shapes) == 32
    assert _count(shapes, lambda k: k.startswith("perception.encoder.") and not k.endswith(buffers)) == 810_984_448
    assert _count(shapes, lambda k: k.startswith("perception.proj.")) == 2_099_200
    assert _count(shapes, lambda k: (k.startswith("llm.") or k == "embed_tokens.weight") and "lora_" not in k) == (
        1_720_574_976
    )
    assert _count(shapes, lambda k: "lora_" in k) == 25_690_112
    # spot checks of the exact names and shapes docs/MODEL.md lists
    assert shapes["perception.preprocessor.featurizer.fb"] == (1, 128, 257)
    assert shapes["perception.preprocessor.featurizer.window"] == (400,)
    assert shapes["perception.encoder.layers.31.self_attn.pos_bias_u"] == (8, 128)
    assert shapes["perception.proj.weight"] == (2048, 1024)
    assert shapes["embed_tokens.weight"] == (151936, 2048)
    layer = "llm.base_model.model.model.layers.27.self_attn."
    assert shapes[layer + "q_proj.lora_A.default.weight"] == (128, 2048)
    assert shapes[layer + "v_proj.lora_B.default.weight"] == (1024, 128)
    assert shapes[layer + "k_proj.weight"] == (1024, 2048)
    assert "lm_head.weight" not in shapes and not any("modality_adapter" in k for k in shapes)


def test_random_checkpoint_layout(tiny_checkpoint):
    shapes = tiny_checkpoint.expected_shapes()
    with safe_open(tiny_checkpoint.weights_file, framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    assert {k: tuple(v.shape) for k, v in stored.items()} == shapes
    for key, value in stored.items():
        assert value.dtype == (torch.int64 if key.endswith("num_batches_tracked") else torch.bfloat16), key
    lora_b = [v for k, v in stored.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "LoRA B must be non-zero, or the merge is untested"
    bn_var = [v for k, v in stored.items() if k.endswith("running_var")]
    assert all(not torch.all(v == 1) for v in bn_var), "BatchNorm statistics must not be the identity"
    # config.json as NeMo writes it, pointing at the LLM directory written beside it
    config = json.loads((tiny_checkpoint.path / "config.json").read_text())
    assert config["audio_locator_tag"] == "<|audioplaceholder|>" and config["prompt_format"] == "qwen"
    assert "model_type" not in config and "architectures" not in config
    assert tiny_checkpoint.llm_path == tiny_checkpoint.path / config["pretrained_llm"]
    assert tiny_checkpoint.llm_config["vocab_size"] == 151936 and tiny_checkpoint.llm_config["tie_word_embeddings"]
    assert tiny_checkpoint.lora_scale == 2.0


def test_frontend_buffers_are_nemo_values_rounded_to_bf16(tiny_checkpoint):
    from omegaconf import OmegaConf
    from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor

    featurizer = AudioToMelSpectrogramPreprocessor.from_config_dict(
        OmegaConf.create(tiny_checkpoint.config["perception"]["preprocessor"])
    ).featurizer
    stored = load_file(tiny_checkpoint.weights_file)
    for name in ("fb", "window"):
        value = stored[f"perception.preprocessor.featurizer.{name}"]
        assert torch.equal(value, getattr(featurizer, name).to(torch.bfloat16))
        assert not torch.equal(value.float(), getattr(featurizer, name)), f"{name} must be stored rounded"


def test_key_names_load_strictly_into_nemo_and_peft_modules(tiny_checkpoint):
    """The names are the real ones: NeMo's AudioPerceptionModule and the PEFT-wrapped Qwen3 take them as is."""
    from omegaconf import OmegaConf
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from nemo.collections.speechlm2.modules.perception import AudioPerceptionModule

    weights = tiny_checkpoint.read_weights()
    perception = AudioPerceptionModule(OmegaConf.create(tiny_checkpoint.config["perception"]))
    perception.load_state_dict({k.removeprefix("perception."): v for k, v in weights.items() if k.startswith("perception.")})
    llm = get_peft_model(Qwen3ForCausalLM(Qwen3Config(**tiny_checkpoint.llm_config)), LoraConfig(**tiny_checkpoint.config["lora"]))
    llm_weights = {k.removeprefix("llm."): v for k, v in weights.items() if k.startswith("llm.")}
    llm_weights["base_model.model.model.embed_tokens.weight"] = weights["embed_tokens.weight"]
    missing, unexpected = llm.load_state_dict(llm_weights, strict=False)
    assert unexpected == [] and missing == ["base_model.model.lm_head.weight"]  # tied to the embedding


@pytest.fixture
def copy_of(tiny_checkpoint, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint.path, target)
    return target


def _rewrite(path, change):
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_wrong_shape_names_key_and_both_shapes(copy_of):
    key = "perception.encoder.layers.1.self_attn.linear_q.weight"
    _rewrite(copy_of, lambda t: t.__setitem__(key, torch.zeros(64, 63, dtype=torch.bfloat16)))
    with pytest.raises(CheckpointError, match=rf"'{key}' has shape \(64, 63\) but the config expects \(64, 64\)"):
        Checkpoint.open(copy_of).read_weights()


def test_missing_tensor_is_named(copy_of):
    key = "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"
    _rewrite(copy_of, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=rf"missing tensor '{key}' \(expected shape \(128, 8\)\)"):
        Checkpoint.open(copy_of).read_weights()


def test_extra_tensor_is_named(copy_of):
    _rewrite(copy_of, lambda t: t.__setitem__("lm_head.weight", torch.zeros(2, 2, dtype=torch.bfloat16)))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'lm_head.weight' with shape \(2, 2\)"):
        Checkpoint.open(copy_of).read_weights()


def test_missing_files_and_directories(copy_of, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint.open(tmp_path / "nowhere")
    (copy_of / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        Checkpoint.open(copy_of)


def _set_pretrained_llm(path, value):
    config = json.loads((path / "config.json").read_text())
    config["pretrained_llm"] = value
    (path / "config.json").write_text(json.dumps(config))


def test_pretrained_llm_absolute_path(copy_of, tmp_path):
    llm = tmp_path / "elsewhere" / "qwen"
    shutil.move(copy_of / "Qwen3-tiny", llm)
    _set_pretrained_llm(copy_of, str(llm))
    assert Checkpoint.open(copy_of).llm_path == llm


def test_pretrained_llm_from_the_hf_cache(copy_of, tmp_path, monkeypatch):
    """An HF id resolves through the local cache, offline, as for the real `Qwen/Qwen3-1.7B`."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--Qwen--Qwen3-1.7B" / "snapshots" / ("0" * 40)
    shutil.copytree(copy_of / "Qwen3-tiny", snapshot)
    (cache / "models--Qwen--Qwen3-1.7B" / "refs").mkdir()
    (cache / "models--Qwen--Qwen3-1.7B" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    _set_pretrained_llm(copy_of, "Qwen/Qwen3-1.7B")
    assert Checkpoint.open(copy_of).llm_path == snapshot


def test_unknown_pretrained_llm_is_a_clear_error(copy_of, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(CheckpointError, match="'Qwen/Nope' is neither a directory"):
        resolve_llm("Qwen/Nope", copy_of)
