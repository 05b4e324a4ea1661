"""The LoRA merge: the merged Qwen3 computes what PEFT's unmerged base + LoRA computes."""

import pytest
import torch

from canary_trt.checkpoint import merged_llm_weights

pytestmark = pytest.mark.slow  # PEFT and NeMo modules


def _peft_llm(checkpoint, weights):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    model = get_peft_model(Qwen3ForCausalLM(Qwen3Config(**checkpoint.llm_config)), LoraConfig(**checkpoint.config["lora"]))
    state = {k.removeprefix("llm."): v.float() for k, v in weights.items() if k.startswith("llm.")}
    state["base_model.model.model.embed_tokens.weight"] = weights["embed_tokens.weight"].float()
    model.load_state_dict(state, strict=False)
    model.base_model.model.tie_weights()
    return model.float().eval()


@torch.inference_mode()
def test_merged_equals_unmerged(tiny_checkpoint, reference):
    weights = tiny_checkpoint.read_weights()
    unmerged = _peft_llm(tiny_checkpoint, weights)
    ids = torch.randint(0, 151936, (2, 40), generator=torch.Generator().manual_seed(0))
    expected = unmerged(input_ids=ids).logits
    merged = reference.llm(input_ids=ids).logits
    diff = (merged - expected).abs().max().item()
    print(f"max |merged - unmerged| logit difference: {diff:.2e} (logit std {expected.std():.2f})")
    assert diff < 1e-4
    assert torch.equal(merged.argmax(-1), expected.argmax(-1))
    # the LoRA matters: without it the logits move far beyond that tolerance
    with unmerged.disable_adapter():
        assert (unmerged(input_ids=ids).logits - merged).abs().max() > 1e-2


def test_merge_formula(tiny_checkpoint):
    """W' = W + (alpha / r) * B @ A in fp32, for q_proj and v_proj of every layer; other weights untouched."""
    weights = tiny_checkpoint.read_weights()
    merged = merged_llm_weights(weights, tiny_checkpoint.lora_scale, torch.float32)
    stem = "llm.base_model.model.model.layers.1.self_attn.v_proj."
    a, b = weights[stem + "lora_A.default.weight"].double(), weights[stem + "lora_B.default.weight"].double()
    expected = weights[stem + "base_layer.weight"].double() + 2.0 * (b @ a)
    assert torch.allclose(merged["model.layers.1.self_attn.v_proj.weight"].double(), expected, atol=1e-6)
    assert torch.equal(merged["model.layers.1.self_attn.k_proj.weight"], weights[stem.replace("v_proj", "k_proj") + "weight"].float())
    assert not any("lora" in k or "base_layer" in k for k in merged)
