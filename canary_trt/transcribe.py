"""Batched transcription on top of any backend that can embed audio and generate from embeddings.

A backend (the PyTorch reference, the ONNX Runtime pipeline) provides
`embed_audio(waveforms) -> list of [T'_i, H] arrays`, `generate(embeddings, prompt_ids, max_new_tokens,
force_length) -> list of token-id lists` and `tokenizer`; the prompt, batching and decoding to text live here once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .audio import duration
from .contract import MAX_NEW_TOKENS
from .tokenizer import DEFAULT_INSTRUCTION, asr_prompt_ids, decode


@dataclass
class Transcript:
    text: str
    token_ids: list[int]  # generated ids, without the end-of-turn token
    audio_seconds: float


def transcribe(
    backend,
    waveforms: list[np.ndarray],
    batch_size: int = 8,
    max_new_tokens: int = MAX_NEW_TOKENS,
    instruction: str = DEFAULT_INSTRUCTION,
    force_length: bool = False,
) -> list[Transcript]:
    """force_length: exactly max_new_tokens per clip, ignoring <|im_end|> (benchmarks on random weights)."""
    prompt = asr_prompt_ids(backend.tokenizer, instruction)
    results = []
    for start in range(0, len(waveforms), batch_size):
        chunk = waveforms[start : start + batch_size]
        for wav, ids in zip(chunk, backend.generate(backend.embed_audio(chunk), prompt, max_new_tokens, force_length)):
            results.append(Transcript(decode(backend.tokenizer, ids), ids, duration(wav)))
    return results
