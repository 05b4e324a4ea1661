"""The Qwen3 decoder (fp32) as one ONNX graph for prefill and decode, for ONNX Runtime on CPU: decoder.onnx
with the LoRA merged (ASR mode), and with `--llm-mode` also llm_decoder.onnx, the base LLM (LoRA off).

Contract (B, S, P dynamic; P = 0 at prefill):
  inputs   inputs_embeds f32 [B, S, H], attention_mask int64 [B, P+S] (0 = left padding),
           position_ids int64 [B, S], past_key_values.{i}.key / .value f32 [B, kv_heads, P, head_dim]
  outputs  logits f32 [B, V] (last position only), present.{i}.key / .value f32 [B, kv_heads, P+S, head_dim]
The token embedding stays outside the graph (embed_tokens.npy, mmapped at run time) so that audio rows
can be spliced in; the graph still holds it once more as the tied lm_head. Both graphs share the one file:
the LoRA adapts only attention projections (checkpoint.merged_llm_weights), never the embedding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache, Qwen3Config, Qwen3ForCausalLM

from ..checkpoint import LLM_KEYS, Checkpoint, merged_llm_weights
from ..contract import DECODER_ONNX, EMBEDDINGS, LLM_DECODER_ONNX
from ..decoding import input_names, output_names

DATA_NAME = DECODER_ONNX + ".data"
OPSET = 18


class DecoderStep(torch.nn.Module):
    """Flat tensors in and out around transformers' Qwen3ForCausalLM and its DynamicCache."""

    def __init__(self, llm):
        super().__init__()
        self.llm = llm

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        cache = DynamicCache(list(zip(past[0::2], past[1::2])), config=self.llm.config)
        out = self.llm(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, use_cache=True, logits_to_keep=1,
        )  # fmt: skip
        return out.logits[:, -1], *(t for layer in out.cache.layers for t in (layer.keys, layer.values))


def load_llm(checkpoint: Checkpoint, lora: bool = True):
    """transformers' Qwen3ForCausalLM in fp32 with the LoRA merged, or (lora=False) the base LLM as SALM's
    `llm.disable_adapter()` runs it: a merge at scale 0 is W + 0 = W, the stored base weights exactly."""
    # The bf16 tensors die with the merge's scope; the fp32 merge then becomes the model's parameters as
    # they are (from_pretrained builds on the meta device), so there is never a second fp32 copy.
    scale = checkpoint.lora_scale if lora else 0.0
    merged = merged_llm_weights(checkpoint.read_weights(LLM_KEYS), scale, torch.float32)
    # Eager attention: an additive mask with finite minima keeps fully padded rows finite (no NaN in the cache).
    config = Qwen3Config(**checkpoint.llm_config, attn_implementation="eager")
    llm = Qwen3ForCausalLM.from_pretrained(None, config=config, state_dict=merged, dtype=torch.float32)
    return llm.eval()


def export_decoder_onnx(checkpoint: Checkpoint, out_dir, lora: bool = True) -> Path:
    """decoder.onnx (+ embed_tokens.npy), or with lora=False llm_decoder.onnx, which reads the same
    embed_tokens.npy: a CPU build always exports decoder.onnx, so the base LLM's export does not write it again."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    llm = load_llm(checkpoint, lora)
    if lora:
        np.save(out_dir / EMBEDDINGS, llm.get_input_embeddings().weight.detach().numpy())

    config = llm.config
    layers, kv_heads, head_dim = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
    b, s, p = 2, 3, 4  # example sizes > 1 and distinct, so that no axis gets specialized
    example = (
        torch.randn(b, s, config.hidden_size),
        torch.ones(b, p + s, dtype=torch.int64),
        torch.arange(p, p + s).expand(b, s),
        *(torch.randn(b, kv_heads, p, head_dim) for _ in range(2 * layers)),
    )
    Dim = torch.export.Dim
    batch, seq, past = Dim("batch"), Dim("seq"), Dim("past")
    shapes = (
        {0: batch, 1: seq}, {0: batch, 1: Dim("total")}, {0: batch, 1: seq},
        ({0: batch, 2: past},) * (2 * layers),  # *past arrives as one tuple
    )  # fmt: skip
    path = out_dir / (DECODER_ONNX if lora else LLM_DECODER_ONNX)
    with torch.no_grad():
        program = torch.onnx.export(
            DecoderStep(llm).eval(), example, input_names=input_names(layers), output_names=output_names(layers),
            dynamic_shapes=shapes, opset_version=OPSET, dynamo=True, verbose=False,
        )  # fmt: skip
    program.save(str(path), external_data=True)  # the weights go into one file beside it, `<name>.data`
    return path
