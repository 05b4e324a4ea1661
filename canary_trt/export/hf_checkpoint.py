"""The checkpoint's LLM as a standard Hugging Face Qwen3 directory with the LoRA merged (hf_llm/), or for
`--llm-mode` without it (hf_llm_base/: the base LLM, LoRA off): the input of TensorRT-LLM's converter, and
loadable by any Qwen3 runtime.

The head is written out: `lm_head.weight` (a copy of the embedding) with `tie_word_embeddings: false`.
TensorRT-LLM's converter maps a missing head to the embedding only for qwen2, not for qwen3
(docs/GPU.md#tied-head); an explicit head is numerically identical and leaves nothing to loader behaviour.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import LLM_KEYS, Checkpoint, merged_llm_weights
from ..tokenizer import copy_tokenizer_files, load_tokenizer

DTYPES = ("float16", "bfloat16", "float32")  # float32 only for exact parity tests


def write_merged_hf_checkpoint(checkpoint: Checkpoint, out_dir: str | Path, dtype: str = "float16",
                               weights: dict | None = None, lora: bool = True) -> Path:  # fmt: skip
    """Write config.json, model.safetensors, generation_config.json and the tokenizer files to out_dir.

    `weights` (the checkpoint's LLM tensors, `Checkpoint.read_weights(LLM_KEYS)`) saves reading them again when
    writing several variants. lora=False: the base weights as stored (a merge at scale 0 is W + 0 = W).
    Memory: the source tensors plus ONE merged copy in `dtype`, plus the head.
    """
    import torch
    from safetensors.torch import save_file

    from ..reference import greedy_generation_config

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = merged_llm_weights(checkpoint.read_weights(LLM_KEYS) if weights is None else weights,
                               checkpoint.lora_scale if lora else 0.0, getattr(torch, dtype))  # fmt: skip
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()  # safetensors refuses shared storage
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    del state

    config = {**checkpoint.llm_config, "tie_word_embeddings": False, "torch_dtype": dtype, "dtype": dtype}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    copy_tokenizer_files(checkpoint.llm_path, out_dir)
    # NeMo's greedy settings, not Qwen3's sampling defaults, for runtimes that read generation_config.json
    greedy_generation_config(load_tokenizer(checkpoint.llm_path)).save_pretrained(out_dir)
    return out_dir
