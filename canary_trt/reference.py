"""The yardstick every other backend is compared with, token by token.

It is NeMo's SALM inference path rebuilt from the libraries themselves: NeMo's AudioPerceptionModule
(AudioToMelSpectrogramPreprocessor + ConformerEncoder + identity adapter + proj) with the checkpoint's
weights, including its stored bf16 filterbank and window; transformers' Qwen3ForCausalLM with the LoRA
merged in fp32; NeMo's own placeholder splice and left padding; Hugging Face greedy generation with a
fresh GenerationConfig (Qwen3's sampling defaults are not applied), exactly as `SALM.generate` does.
"""

from __future__ import annotations

import numpy as np
import torch

from .checkpoint import Checkpoint, merged_llm_weights, perception_weights
from .tokenizer import eos_id, load_tokenizer, pad_id, placeholder_id
from .transcribe import MAX_NEW_TOKENS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Reference:
    def __init__(self, checkpoint: Checkpoint, dtype: str = "fp32", device: str = "cpu"):
        from omegaconf import OmegaConf
        from transformers import Qwen3Config, Qwen3ForCausalLM
        from nemo.collections.speechlm2.modules.perception import AudioPerceptionModule

        self.checkpoint, self.dtype, self.device = checkpoint, DTYPES[dtype], torch.device(device)
        weights = checkpoint.read_weights()
        # NeMo builds the model in fp32 (bf16 weights upcast exactly); the front end always runs in fp32.
        self.perception = AudioPerceptionModule(OmegaConf.create(checkpoint.config["perception"])).eval()
        self.perception.load_state_dict({k: v.float() for k, v in perception_weights(weights).items()}, strict=True)
        self.perception.encoder.to(self.dtype)
        self.perception.proj.to(self.dtype)

        self.llm = Qwen3ForCausalLM(Qwen3Config(**checkpoint.llm_config)).eval().to(self.dtype)
        merged = merged_llm_weights(weights, checkpoint.lora_scale, self.dtype)
        missing, unexpected = self.llm.load_state_dict(merged, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:  # the head is tied to the embedding
            raise RuntimeError(f"LLM weights do not fit Qwen3: missing {missing}, unexpected {unexpected}")
        self.llm.tie_weights()
        self.perception.to(self.device)
        self.llm.to(self.device)

        self.tokenizer = load_tokenizer(checkpoint.llm_path)
        self.placeholder_id = placeholder_id(self.tokenizer)
        self.eos_id, self.pad_id = eos_id(self.tokenizer), pad_id(self.tokenizer)

    @torch.inference_mode()
    def embed_audio(self, waveforms: list[np.ndarray]) -> list[torch.Tensor]:
        """Audio embeddings [T'_i, hidden] per clip; the batch is zero-padded with true lengths."""
        lengths = torch.tensor([len(w) for w in waveforms])
        batch = torch.zeros(len(waveforms), int(lengths.max()))
        for i, w in enumerate(waveforms):
            batch[i, : len(w)] = torch.from_numpy(w)
        batch, lengths = batch.to(self.device), lengths.to(self.device)
        features, feature_lengths = self.perception.preprocessor(input_signal=batch, length=lengths)
        embeddings, embedding_lengths = self.perception(
            processed_signal=features.to(self.dtype), processed_signal_length=feature_lengths
        )
        return [e[:n] for e, n in zip(embeddings, embedding_lengths.tolist())]

    @torch.inference_mode()
    def generate(
        self, embeddings: list[torch.Tensor], prompt_ids: list[int], max_new_tokens: int = MAX_NEW_TOKENS,
        force_length: bool = False,
    ) -> list[list[int]]:
        """Greedy token ids for each clip's audio embeddings spliced into `prompt_ids`. force_length: never
        stop at <|im_end|> (benchmarks on random weights compare equal work)."""
        from nemo.collections.speechlm2.models.salm import replace_placeholders_and_build_targets

        tokens = torch.tensor([prompt_ids] * len(embeddings), device=self.device)
        text = self.llm.get_input_embeddings()(tokens.where(tokens != self.placeholder_id, 0))
        inputs, _, mask = replace_placeholders_and_build_targets(
            input_ids=tokens, embeds=text, padding_id=self.pad_id, placeholder_id=self.placeholder_id,
            replacements=embeddings, target_ids=None,
        )  # fmt: skip
        config = greedy_generation_config(self.tokenizer, max_new_tokens)
        if force_length:
            config.min_new_tokens = max_new_tokens
        out = self.llm.generate(inputs_embeds=inputs, attention_mask=mask, generation_config=config)
        return [_until(row.tolist(), self.eos_id) for row in out]


def greedy_generation_config(tokenizer, max_new_tokens: int = MAX_NEW_TOKENS):
    """NeMo's fresh GenerationConfig (SALM.generate): greedy, stop at <|im_end|>; Qwen3's own sampling
    defaults in generation_config.json are never applied."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=None, eos_token_id=eos_id(tokenizer), pad_token_id=pad_id(tokenizer),
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
    )  # fmt: skip


def _until(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id)] if eos_id in ids else ids
