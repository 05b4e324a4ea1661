#!/usr/bin/env python3
"""Offline Canary-Qwen checkpoint -> BF16 GGUF for transcribe.cpp 0.2.1, without NeMo or the HF hub.

Imports transcribe.cpp's own converter from its source tree at run time (--src; scripts/convert-canary-qwen.py
at v0.2.1, commit ea077b87590bcfb090d7c38c03ab36cd1c7005d3) and keeps its tensor tables, KV block, dtype
routing and writer; only five of its functions are replaced, because here there is no NeMo
SALM.from_pretrained, no torch and no hub:
  - load_salm / model.state_dict(): the checkpoint's model.safetensors through a memory map, with the PEFT
    LoRA on q_proj/v_proj merged as merge_and_unload does (W + lora_alpha/r * B @ A, in fp32) and the PEFT
    prefix `llm.base_model.model.` renamed to the post-merge `llm.`;
  - read_hparams: the same dict, from the checkpoint's config.json and its Qwen3 config.json;
  - fetch_lm_tokenizer / extract_tokenizer: the checkpoint's own Qwen3 tokenizer.json (vocab, merges, added
    tokens) instead of Qwen/Qwen3-1.7B's vocab.json/merges.txt/tokenizer_config.json from the hub;
  - tensor_to_fp32_numpy: bf16 bits -> fp32 with numpy.

    build/tcpp-venv/bin/python benchmarks/transcribe_cpp/convert_local.py CHECKPOINT_DIR OUT.gguf --src build/tcpp/src
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np

LLM_PEFT = "llm.base_model.model."
DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "I64": np.int64}


class Lazy:
    """A checkpoint tensor: shape now, fp32 values when asked (merged LoRA for q_proj/v_proj)."""

    def __init__(self, raw: dict, key: str, lora: tuple[str, str, float] | None = None):
        self.raw, self.key, self.lora = raw, key, lora
        self.shape = tuple(raw[key].shape)
        self.dtype = raw[key].dtype

    def fp32(self) -> np.ndarray:
        value = to_fp32(self.raw[self.key])
        if self.lora is not None:
            a_key, b_key, scale = self.lora
            value = value + np.float32(scale) * (to_fp32(self.raw[b_key]) @ to_fp32(self.raw[a_key]))
        return np.ascontiguousarray(value, dtype=np.float32)


def to_fp32(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint16:  # bf16 bits
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)


def open_safetensors(path: Path) -> dict[str, np.ndarray]:
    """name -> read-only memmap view (bf16 as uint16)."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for key, info in header.items():
        begin, end = info["data_offsets"]
        dtype = np.dtype(DTYPES[info["dtype"]])
        out[key] = data[begin:end].view(dtype).reshape(info["shape"])
    return out


def state_dict(raw: dict, config: dict) -> dict[str, Lazy]:
    lora = config.get("lora")
    scale = lora["lora_alpha"] / lora["r"] if lora else 0.0
    sd = {}
    for key in raw:
        if ".lora_" in key:
            continue
        name = "llm." + key[len(LLM_PEFT):] if key.startswith(LLM_PEFT) else key
        if ".base_layer." in key:
            stem = key.removesuffix("base_layer.weight")
            sd[name.replace(".base_layer.", ".")] = Lazy(
                raw, key, (f"{stem}lora_A.default.weight", f"{stem}lora_B.default.weight", scale))
        else:
            sd[name] = Lazy(raw, key)
    if any(".lora_" in k for k in sd) or any(".base_layer." in k for k in sd):
        raise RuntimeError("LoRA merge left adapter tensors behind")
    return sd


def hparams(config: dict, lm: dict) -> dict:
    """convert-canary-qwen.py's read_hparams(), from the two config.json files."""
    perc, pre, enc = config["perception"], config["perception"]["preprocessor"], config["perception"]["encoder"]
    sr = int(pre["sample_rate"])
    return {
        "enc_n_layers": int(enc["n_layers"]), "enc_d_model": int(enc["d_model"]), "enc_n_heads": int(enc["n_heads"]),
        "enc_d_ff": int(enc["d_model"]) * int(enc["ff_expansion_factor"]),
        "enc_conv_kernel": int(enc["conv_kernel_size"]), "enc_subsampling_factor": int(enc["subsampling_factor"]),
        "enc_subsampling_channels": int(enc["subsampling_conv_channels"]),
        "enc_pos_emb_max_len": int(enc["pos_emb_max_len"]), "enc_use_bias": True,
        "perception_output_dim": int(perc["output_dim"]),
        "audio_locator_tag": str(config.get("audio_locator_tag", "<|audioplaceholder|>")),
        "dec_n_layers": int(lm["num_hidden_layers"]), "dec_hidden": int(lm["hidden_size"]),
        "dec_intermediate": int(lm["intermediate_size"]), "dec_n_heads": int(lm["num_attention_heads"]),
        "dec_n_kv_heads": int(lm["num_key_value_heads"]), "dec_head_dim": int(lm["head_dim"]),
        "dec_hidden_act": str(lm.get("hidden_act", "silu")).lower(), "dec_rms_norm_eps": float(lm["rms_norm_eps"]),
        "dec_rope_theta": float(lm.get("rope_theta", 10000.0)), "dec_max_pos_emb": int(lm["max_position_embeddings"]),
        "dec_tie_embeddings": bool(lm.get("tie_word_embeddings", True)), "dec_vocab_size": int(lm["vocab_size"]),
        "fe_type": "mel", "fe_num_mels": int(pre["features"]), "fe_sample_rate": sr, "fe_n_fft": int(pre["n_fft"]),
        "fe_win_length": int(round(float(pre["window_size"]) * sr)),
        "fe_hop_length": int(round(float(pre["window_stride"]) * sr)),
        "fe_window": str(pre["window"]), "fe_normalize": str(pre["normalize"]), "fe_dither": 0.0,
        "fe_log": bool(pre.get("log", True)), "fe_pre_emphasis": 0.97, "fe_f_min": 0.0, "fe_f_max": sr / 2.0,
        "fe_pad_mode": "reflect", "fe_center": True, "fe_mel_norm": "slaney",
    }


def tokenizer_from_json(lm_dir: Path, vocab_size: int, tag: str, tag_id: int, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL) -> dict:
    """extract_tokenizer()'s result, from tokenizer.json (+ tokenizer_config.json for eos/pad/bos)."""
    tj = json.loads((lm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    cfg = json.loads((lm_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    by_id = {int(i): (t, False) for t, i in tj["model"]["vocab"].items()}
    for a in tj["added_tokens"]:
        by_id[int(a["id"])] = (a["content"], bool(a.get("special", False)))
    by_id[tag_id] = (tag, True)
    if max(by_id) + 1 > vocab_size:
        raise ValueError(f"tokenizer has id {max(by_id)} but vocab_size={vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        tok, special = by_id.get(i, (f"<|unused_{i}|>", False))
        tokens.append(tok)
        types.append(TOKEN_TYPE_CONTROL if special else TOKEN_TYPE_NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    ids = {t: i for i, (t, _) in by_id.items()}

    def named(field):
        tok = cfg.get(field)
        tok = tok.get("content") if isinstance(tok, dict) else tok
        return ids.get(tok) if tok else None

    return {"tokens": tokens, "types": types, "merges": merges, "eos_id": named("eos_token"),
            "pad_id": named("pad_token"), "bos_id": named("bos_token"), "chat_template": cfg.get("chat_template")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--src", type=Path, required=True, help="transcribe.cpp source tree (v0.2.1)")
    args = p.parse_args()

    script = args.src / "scripts" / "convert-canary-qwen.py"
    if not script.is_file():
        raise SystemExit(f"{script} is missing: --src must be transcribe.cpp's v0.2.1 source tree")
    spec = importlib.util.spec_from_file_location("convert_canary_qwen", script)
    up = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(up)

    ckpt = args.checkpoint.resolve()
    config = json.loads((ckpt / "config.json").read_text())
    llm_dir = Path(config["pretrained_llm"])
    llm_dir = llm_dir if llm_dir.is_absolute() else ckpt / llm_dir
    lm = json.loads((llm_dir / "config.json").read_text())
    raw = open_safetensors(ckpt / "model.safetensors")
    sd = state_dict(raw, config)

    class Model:  # what convert() touches: state_dict()
        def state_dict(self):
            return sd

    up.load_salm = lambda spec: Model()
    up.read_hparams = lambda model: hparams(config, lm)
    up.fetch_lm_tokenizer = lambda repo: llm_dir
    up.extract_tokenizer = lambda lm_dir, vocab_size, audio_locator_tag, audio_locator_id: tokenizer_from_json(
        lm_dir, vocab_size, audio_locator_tag, audio_locator_id, up.TOKEN_TYPE_CONTROL, up.TOKEN_TYPE_NORMAL)
    up.tensor_to_fp32_numpy = lambda t: t.fp32()

    repo_id = "nvidia/canary-qwen-2.5b"
    variant, profile = up.resolve_variant(str(ckpt), repo_id)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    up.convert(str(ckpt), args.out, variant, profile, repo_id=repo_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
