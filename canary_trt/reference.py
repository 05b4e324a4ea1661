"""The yardstick every other backend is compared with, token by token.

It is NeMo's SALM inference path rebuilt from the libraries themselves: NeMo's AudioPerceptionModule
(AudioToMelSpectrogramPreprocessor + ConformerEncoder + identity adapter + proj) with the checkpoint's
weights, including its stored bf16 filterbank and window; transformers' Qwen3ForCausalLM with the LoRA
merged in fp32; NeMo's own placeholder splice and left padding; Hugging Face greedy generation with a
fresh GenerationConfig (Qwen3's sampling defaults are not applied), exactly as `SALM.generate` does.
LLM mode (the model card's second step) runs the same LLM with the LoRA off: `Reference.llm_mode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from .checkpoint import LLM_KEYS, Checkpoint, merged_llm_weights, perception_weights
from .contract import LlmBudgets
from .llm_mode import llm_prompt_ids, transcript_text
from .tokenizer import asr_prompt_ids, eos_id, load_tokenizer, pad_id, placeholder_id
from .transcribe import MAX_NEW_TOKENS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Reference:
    def __init__(self, checkpoint: Checkpoint, dtype: str = "fp32", device: str = "cpu"):
        from omegaconf import OmegaConf
        from nemo.collections.speechlm2.modules.perception import AudioPerceptionModule

        self.checkpoint, self.dtype, self.device = checkpoint, DTYPES[dtype], torch.device(device)
        weights = checkpoint.read_weights()
        # NeMo builds the model in fp32 (bf16 weights upcast exactly); the front end always runs in fp32.
        self.perception = AudioPerceptionModule(OmegaConf.create(checkpoint.config["perception"])).eval()
        self.perception.load_state_dict({k: v.float() for k, v in perception_weights(weights).items()}, strict=True)
        self.perception.encoder.to(self.dtype)
        self.perception.proj.to(self.dtype)

        self.llm = _qwen3(checkpoint, merged_llm_weights(weights, checkpoint.lora_scale, self.dtype), self.dtype)
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

    @cached_property
    def base_llm(self):
        """The LLM with the LoRA off, as SALM's `llm.disable_adapter()` runs it: the stored base weights (a
        merge at scale 0 is W + 0 = W exactly). Built on first use: only LLM mode needs it."""
        weights = self.checkpoint.read_weights(LLM_KEYS)
        return _qwen3(self.checkpoint, merged_llm_weights(weights, 0.0, self.dtype), self.dtype).to(self.device)

    def llm_mode(
        self, audio: np.ndarray | None, question: str, enable_thinking: bool = True,
        max_new_tokens: int = LlmBudgets.max_new_tokens, asr_max_new_tokens: int = MAX_NEW_TOKENS,
    ) -> "LlmModeIds":
        """The model card's LLM mode, token-exact with NeMo: the clip's ASR ids (LoRA on, default prompt), then
        greedy ids of the base LLM for the question and their transcript (the question alone without audio)."""
        transcript_ids = None
        if audio is not None:
            (transcript_ids,) = self.generate(self.embed_audio([audio]), asr_prompt_ids(self.tokenizer), asr_max_new_tokens)
        transcript = None if transcript_ids is None else transcript_text(self.tokenizer, transcript_ids)
        prompt = llm_prompt_ids(self.tokenizer, question, transcript, enable_thinking)
        # Text-only, as SALM.generate without audio: input ids, which Hugging Face returns before the new ids.
        # (Not under inference_mode: base_llm may be built here, and its weights must stay usable outside it.)
        tokens = torch.tensor([prompt], device=self.device)
        out = self.base_llm.generate(input_ids=tokens, attention_mask=torch.ones_like(tokens),
                                     generation_config=greedy_generation_config(self.tokenizer, max_new_tokens))  # fmt: skip
        return LlmModeIds(transcript_ids, prompt, _until(out[0, len(prompt) :].tolist(), self.eos_id))


@dataclass(frozen=True)
class LlmModeIds:
    transcript_ids: list[int] | None  # ASR mode's ids, cut at <|im_end|>; None for a text-only request
    prompt_ids: list[int]  # the base LLM's prompt (llm_mode.llm_prompt_ids)
    answer_ids: list[int]  # its greedy ids, cut at <|im_end|>: fewer than max_new_tokens iff it stopped there


def _qwen3(checkpoint: Checkpoint, state_dict: dict, dtype):
    """transformers' Qwen3ForCausalLM with a plain Qwen3 state dict; the head is tied to the embedding."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    llm = Qwen3ForCausalLM(Qwen3Config(**checkpoint.llm_config)).eval().to(dtype)
    missing, unexpected = llm.load_state_dict(state_dict, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"LLM weights do not fit Qwen3: missing {missing}, unexpected {unexpected}")
    llm.tie_weights()
    return llm


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
