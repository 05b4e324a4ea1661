"""The nvidia/canary-qwen-2.5b checkpoint layout: open it, check every tensor, merge the LoRA.

Layout (docs/MODEL.md#checkpoint-layout): a NeMo SALM `config.json`, one bf16 `model.safetensors`, and no LLM files:
the Qwen3 config and tokenizer come from `pretrained_llm` (a local directory or a Hugging Face id).
The tensor names and shapes the config implies are spelled out once, in `expected_shapes`, which both
the loader (to validate) and the random-checkpoint writer (to generate) use.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInput

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# What to fetch for an HF-id pretrained_llm: configs and tokenizer, not the weights (the SALM file holds them).
LLM_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"]

PERCEPTION = "perception."
LLM_PREFIX = "llm.base_model.model."  # PEFT's wrapping of Qwen3ForCausalLM
EMBEDDING = "embed_tokens.weight"  # SALM keeps the token embedding outside the LLM
LLM_KEYS = (LLM_PREFIX, EMBEDDING)  # what the decoder exports read: read_weights(LLM_KEYS)


class CheckpointError(InvalidInput):
    """A checkpoint that does not match the layout, named precisely."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: dict  # the NeMo SALM config
    llm_path: Path
    llm_config: dict  # the Qwen3 config.json

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Checkpoint":
        path = Path(path).expanduser().resolve()
        config_file = path / CONFIG_NAME
        if not path.is_dir():
            raise CheckpointError(f"checkpoint directory {path} does not exist")
        for required in (config_file, path / WEIGHTS_NAME):
            if not required.is_file():
                raise CheckpointError(f"checkpoint {path}: missing {required.name}")
        config = _read_json(config_file)
        for key in ("pretrained_llm", "audio_locator_tag", "perception"):
            if key not in config:
                raise CheckpointError(f"{config_file}: missing key {key!r}; is this a NeMo SALM config?")
        llm_path = resolve_llm(config["pretrained_llm"], path)
        return cls(path, config, llm_path, _read_json(llm_path / "config.json"))

    @property
    def weights_file(self) -> Path:
        return self.path / WEIGHTS_NAME

    @property
    def lora_scale(self) -> float:
        lora = self.config.get("lora")
        return 0.0 if not lora else lora["lora_alpha"] / lora["r"]

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return expected_shapes(self.config, self.llm_config)

    def read_weights(self, prefixes: tuple[str, ...] = ("",)) -> dict:
        """The tensors whose names start with one of `prefixes` (default: all), as stored (bf16), after
        checking every name and shape in the file against the config. Exports read only what they need,
        so that the full model never sits in memory twice."""
        from safetensors import safe_open

        expected = self.expected_shapes()
        with safe_open(self.weights_file, framework="pt") as f:
            found = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
            check_shapes(found, expected, self.weights_file)
            return {key: f.get_tensor(key) for key in found if key.startswith(prefixes)}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def resolve_llm(name: str, checkpoint_dir: Path) -> Path:
    """`pretrained_llm` as a directory: a local path (relative to the checkpoint directory), else a
    Hugging Face id looked up in the local HF cache, or downloaded when the network allows."""
    local = Path(name).expanduser()
    local = local if local.is_absolute() else checkpoint_dir / local
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise CheckpointError(f"pretrained_llm directory {local} has no config.json")
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=LLM_FILES))
    except Exception as e:  # offline, unknown id, malformed id: one clear message for all
        raise CheckpointError(
            f"pretrained_llm {name!r} is neither a directory (looked in {local}) nor a Hugging Face model "
            f"in the local cache or reachable online: {type(e).__name__}: {e}"
        ) from None


def check_shapes(found: dict[str, tuple], expected: dict[str, tuple], source: Path) -> None:
    problems = [f"missing tensor {k!r} (expected shape {expected[k]})" for k in sorted(expected.keys() - found.keys())]
    problems += [f"unexpected tensor {k!r} with shape {found[k]}" for k in sorted(found.keys() - expected.keys())]
    problems += [
        f"tensor {k!r} has shape {found[k]} but the config expects {expected[k]}"
        for k in sorted(found.keys() & expected.keys())
        if found[k] != expected[k]
    ]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointError(f"{source} does not match its config:\n  {shown}")


def expected_shapes(config: dict, llm: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of the SALM safetensors file that this config implies."""
    perception = config["perception"]
    enc, pre = perception["encoder"], perception["preprocessor"]
    d, ch, feats = enc["d_model"], enc["subsampling_conv_channels"], pre["features"]
    n_fft, window = pre["n_fft"], round(pre["window_size"] * pre["sample_rate"])
    ff, heads, kernel = d * enc["ff_expansion_factor"], enc["n_heads"], enc["conv_kernel_size"]
    if enc["subsampling"] != "dw_striding" or enc["subsampling_factor"] != 8:
        raise CheckpointError("only dw_striding x8 subsampling is supported (as in canary-qwen-2.5b)")

    shapes = {
        "perception.preprocessor.featurizer.fb": (1, feats, n_fft // 2 + 1),
        "perception.preprocessor.featurizer.window": (window,),
    }
    e = "perception.encoder."
    # dw_striding x8: conv(1->ch) ReLU, then twice [depthwise 3x3, pointwise 1x1, ReLU]; freq axis / 8.
    for idx, shape in {0: (ch, 1, 3, 3), 2: (ch, 1, 3, 3), 3: (ch, ch, 1, 1), 5: (ch, 1, 3, 3), 6: (ch, ch, 1, 1)}.items():
        shapes[f"{e}pre_encode.conv.{idx}.weight"] = shape
        shapes[f"{e}pre_encode.conv.{idx}.bias"] = (ch,)
    shapes[f"{e}pre_encode.out.weight"] = (d, ch * (feats // 8))
    shapes[f"{e}pre_encode.out.bias"] = (d,)
    layer = {
        "feed_forward1.linear1.weight": (ff, d), "feed_forward1.linear1.bias": (ff,),
        "feed_forward1.linear2.weight": (d, ff), "feed_forward1.linear2.bias": (d,),
        "feed_forward2.linear1.weight": (ff, d), "feed_forward2.linear1.bias": (ff,),
        "feed_forward2.linear2.weight": (d, ff), "feed_forward2.linear2.bias": (d,),
        "self_attn.linear_pos.weight": (d, d),
        "self_attn.pos_bias_u": (heads, d // heads), "self_attn.pos_bias_v": (heads, d // heads),
        "conv.pointwise_conv1.weight": (2 * d, d, 1), "conv.pointwise_conv1.bias": (2 * d,),
        "conv.depthwise_conv.weight": (d, 1, kernel), "conv.depthwise_conv.bias": (d,),
        "conv.pointwise_conv2.weight": (d, d, 1), "conv.pointwise_conv2.bias": (d,),
        "conv.batch_norm.num_batches_tracked": (),
    }  # fmt: skip
    for name in ("q", "k", "v", "out"):
        layer[f"self_attn.linear_{name}.weight"] = (d, d)
        layer[f"self_attn.linear_{name}.bias"] = (d,)
    for name in ("norm_feed_forward1", "norm_self_att", "norm_conv", "norm_feed_forward2", "norm_out"):
        layer[f"{name}.weight"] = layer[f"{name}.bias"] = (d,)
    for name in ("weight", "bias", "running_mean", "running_var"):
        layer[f"conv.batch_norm.{name}"] = (d,)
    for i in range(enc["n_layers"]):
        shapes.update({f"{e}layers.{i}.{k}": v for k, v in layer.items()})
    hidden = llm["hidden_size"]
    shapes["perception.proj.weight"] = (perception["output_dim"], perception["modality_adapter"]["d_model"])
    shapes["perception.proj.bias"] = (perception["output_dim"],)
    if perception["output_dim"] != hidden:
        raise CheckpointError(f"perception.output_dim {perception['output_dim']} != LLM hidden_size {hidden}")
    shapes.update(_llm_shapes(llm, config.get("lora")))
    return shapes


def _llm_shapes(llm: dict, lora: dict | None) -> dict[str, tuple[int, ...]]:
    hidden, inter, head_dim = llm["hidden_size"], llm["intermediate_size"], llm.get("head_dim") or (
        llm["hidden_size"] // llm["num_attention_heads"]
    )
    q_out, kv_out = llm["num_attention_heads"] * head_dim, llm["num_key_value_heads"] * head_dim
    if not llm.get("tie_word_embeddings", False):
        raise CheckpointError("the SALM layout stores no lm_head: the LLM config must tie word embeddings")
    layer = {
        "self_attn.q_proj.weight": (q_out, hidden), "self_attn.k_proj.weight": (kv_out, hidden),
        "self_attn.v_proj.weight": (kv_out, hidden), "self_attn.o_proj.weight": (hidden, q_out),
        "self_attn.q_norm.weight": (head_dim,), "self_attn.k_norm.weight": (head_dim,),
        "mlp.gate_proj.weight": (inter, hidden), "mlp.up_proj.weight": (inter, hidden),
        "mlp.down_proj.weight": (hidden, inter),
        "input_layernorm.weight": (hidden,), "post_attention_layernorm.weight": (hidden,),
    }  # fmt: skip
    if lora:
        for module in lora["target_modules"]:
            base = layer.pop(f"self_attn.{module}.weight")
            layer[f"self_attn.{module}.base_layer.weight"] = base
            layer[f"self_attn.{module}.lora_A.default.weight"] = (lora["r"], base[1])
            layer[f"self_attn.{module}.lora_B.default.weight"] = (base[0], lora["r"])
    shapes = {EMBEDDING: (llm["vocab_size"], hidden), f"{LLM_PREFIX}model.norm.weight": (hidden,)}
    for i in range(llm["num_hidden_layers"]):
        shapes.update({f"{LLM_PREFIX}model.layers.{i}.{k}": v for k, v in layer.items()})
    return shapes


def perception_weights(weights: dict) -> dict:
    """The `perception.*` tensors under the names of NeMo's AudioPerceptionModule."""
    return {k[len(PERCEPTION) :]: v for k, v in weights.items() if k.startswith(PERCEPTION)}


def merged_llm_weights(weights: dict, lora_scale: float, dtype) -> dict:
    """The LLM as a plain Hugging Face Qwen3 state dict in `dtype`: W' = W + scale * B @ A computed in fp32
    and cast once. The head stays tied to `model.embed_tokens.weight`."""
    merged = {"model.embed_tokens.weight": weights[EMBEDDING].to(dtype)}
    for key, value in weights.items():
        if not key.startswith(LLM_PREFIX) or ".lora_" in key:
            continue
        if ".base_layer." in key:
            stem = key.removesuffix("base_layer.weight")
            a = weights[f"{stem}lora_A.default.weight"].float()
            b = weights[f"{stem}lora_B.default.weight"].float()
            value = value.float() + lora_scale * (b @ a)
        merged[key[len(LLM_PREFIX) :].replace(".base_layer.", ".")] = value.to(dtype)
    return merged
