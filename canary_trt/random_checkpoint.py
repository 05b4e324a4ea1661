"""Random-weight checkpoints in the exact nvidia/canary-qwen-2.5b layout (the real weights cannot be
downloaded here): `full` has the real dimensions, `tiny` every structural feature at toy width.

The written directory holds config.json (the NeMo SALM config), model.safetensors (bf16, real key
names, LoRA unmerged) and the Qwen3 directory that `pretrained_llm` points to (config + tokenizer).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, Checkpoint, expected_shapes
from .errors import InvalidInput
from .tokenizer_build import write_qwen3_tokenizer

SIZES = ("tiny", "full")

# The SALM training config as NeMo saves it for canary-qwen-2.5b (docs/MODEL.md#checkpoint-layout).
FULL_CONFIG = {
    "pretrained_llm": "Qwen/Qwen3-1.7B",
    "pretrained_asr": "nvidia/canary-1b-flash",
    "pretrained_weights": True,
    "audio_locator_tag": "<|audioplaceholder|>",
    "prompt_format": "qwen",
    "freeze_params": ["^llm\\..+$", "^embed_tokens\\..+$"],
    "prevent_freeze_params": [],
    "lora": {"task_type": "CAUSAL_LM", "r": 128, "lora_alpha": 256, "lora_dropout": 0.01,
             "target_modules": ["q_proj", "v_proj"]},
    "perception": {
        "target": "nemo.collections.speechlm2.modules.perception.AudioPerceptionModule",
        "output_dim": 2048,
        "modality_adapter": {"_target_": "nemo.collections.speechlm2.modules.perception.IdentityConnector",
                             "d_model": 1024},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01,
            "window": "hann", "features": 128, "n_fft": 512, "log": True, "frame_splicing": 1,
            "dither": 1e-05, "pad_to": 0, "pad_value": 0.0,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": 128, "feat_out": -1, "n_layers": 32, "d_model": 1024,
            "subsampling": "dw_striding", "subsampling_factor": 8, "subsampling_conv_channels": 256,
            "causal_downsampling": False, "ff_expansion_factor": 4, "self_attention_model": "rel_pos",
            "n_heads": 8, "att_context_size": [-1, -1], "att_context_style": "regular", "xscaling": False,
            "untie_biases": True, "pos_emb_max_len": 5000, "conv_kernel_size": 9, "conv_norm_type": "batch_norm",
            "conv_context_size": None, "dropout": 0.1, "dropout_pre_encoder": 0.1, "dropout_emb": 0.0,
            "dropout_att": 0.1, "stochastic_depth_drop_prob": 0.0, "stochastic_depth_mode": "linear",
            "stochastic_depth_start_layer": 1,
        },
        "spec_augment": {
            "_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
            "freq_masks": 2, "time_masks": 10, "freq_width": 27, "time_width": 0.05,
        },
    },
    "optimizer": {"_target_": "torch.optim.AdamW", "lr": 5e-4, "betas": [0.9, 0.98], "weight_decay": 1e-3},
    "lr_scheduler": {"_target_": "nemo.core.optim.lr_scheduler.CosineAnnealing", "warmup_steps": 2500,
                     "min_lr": 1e-6, "max_steps": 100000},
}  # fmt: skip

# Qwen/Qwen3-1.7B config.json and generation_config.json, verbatim in content.
FULL_LLM_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 40960,
    "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
    "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}  # fmt: skip
GENERATION_CONFIG = {
    "bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
    "temperature": 0.6, "top_k": 20, "top_p": 0.95, "transformers_version": "4.51.0",
}  # fmt: skip

# Toy widths; everything structural (dw_striding x8, 128 mels, rel_pos, conv 9, batch norm, GQA, q/k norm,
# tied head, the full 151936-row vocabulary, LoRA scale 2.0 on q/v) is kept.
TINY_ENCODER = {"n_layers": 2, "d_model": 64, "n_heads": 2, "subsampling_conv_channels": 16}
TINY_LLM = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 32, "max_window_layers": 2}  # fmt: skip
TINY_LORA = {"r": 8, "lora_alpha": 16}
LLM_DIR = {"full": "Qwen3-1.7B", "tiny": "Qwen3-tiny"}


def configs(size: str) -> tuple[dict, dict]:
    """(SALM config, Qwen3 config) for a size. pretrained_llm points to the LLM directory written beside."""
    if size not in SIZES:
        raise InvalidInput(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    config, llm = copy.deepcopy(FULL_CONFIG), dict(FULL_LLM_CONFIG)
    if size == "tiny":
        config["perception"]["encoder"].update(TINY_ENCODER)
        config["perception"]["modality_adapter"]["d_model"] = TINY_ENCODER["d_model"]
        config["lora"].update(TINY_LORA)
        llm.update(TINY_LLM)
    config["perception"]["output_dim"] = llm["hidden_size"]
    config["pretrained_llm"] = LLM_DIR[size]
    return config, llm


def write_random_checkpoint(out: str | Path, size: str = "tiny", seed: int = 0) -> Checkpoint:
    import torch
    from safetensors.torch import save_file

    config, llm = configs(size)
    out = Path(out)
    llm_dir = out / config["pretrained_llm"]
    llm_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out / CONFIG_NAME, config)
    _write_json(llm_dir / "config.json", llm)
    _write_json(llm_dir / "generation_config.json", GENERATION_CONFIG)
    write_qwen3_tokenizer(llm_dir)

    generator = torch.Generator().manual_seed(seed)
    frontend = _frontend_buffers(config["perception"]["preprocessor"])
    tensors = {}
    for key, shape in sorted(expected_shapes(config, llm).items()):
        tensors[key] = frontend[key] if key in frontend else _random_tensor(key, shape, generator)
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    return Checkpoint.open(out)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _frontend_buffers(preprocessor: dict) -> dict:
    """The mel filterbank and window that NeMo computes, rounded to bf16 as the real file stores them."""
    import torch
    from omegaconf import OmegaConf
    from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor

    featurizer = AudioToMelSpectrogramPreprocessor.from_config_dict(OmegaConf.create(preprocessor)).featurizer
    prefix = "perception.preprocessor.featurizer."
    return {prefix + name: getattr(featurizer, name).detach().to(torch.bfloat16).contiguous() for name in ("fb", "window")}


def _random_tensor(key: str, shape: tuple, generator):
    """Values with the scale trained weights have, so activations stay finite at any width and the
    greedy argmax is well separated (flat logits would make token-exact comparisons meaningless)."""
    import torch

    if key.endswith("num_batches_tracked"):
        return torch.randint(1, 1_000_000, shape, generator=generator, dtype=torch.int64)

    def normal(std, mean=0.0):
        return torch.randn(shape, generator=generator) * std + mean

    name = key.rsplit(".", 1)[-1]
    if key.endswith("running_var"):
        value = torch.rand(shape, generator=generator) + 0.5
    elif key.endswith("running_mean") or name == "bias" or "pos_bias" in key:
        value = normal(0.1 if key.endswith("running_mean") else 0.02)
    elif key.endswith(("q_norm.weight", "k_norm.weight")):
        # Sharp attention, as in trained Qwen3; with unit q/k norms attention stays near uniform and a
        # random model repeats the same token whatever the audio, which would make parity tests weak.
        value = normal(0.3, mean=3.0)
    elif len(shape) == 1:  # LayerNorm / RMSNorm / BatchNorm scales
        value = normal(0.1, mean=1.0)
    elif key.endswith("embed_tokens.weight") or "lora_B" in key:
        value = normal(0.02)  # lora_B is zero at init; trained adapters are not
    else:
        value = normal(1.0 / math.sqrt(math.prod(shape[1:])))
    return value.to(torch.bfloat16)
