"""One piece of a longer recording through the `canary_qwen` ensemble, by BLS: shared by `canary_qwen_long`
(long_form.py: the segmenter's chunks of a recording) and `canary_qwen_stream` (streaming.py: a live stream's
finals and interim re-decodes). The same tensors as a direct client request; MAX_NEW_TOKENS is the piece's own
budget, and a piece under the ensemble's 0.1-s minimum is zero-padded to it."""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from ..contract import (ENSEMBLE, INPUT_MAX_NEW_TOKENS, INPUT_PROMPT, INPUT_WAV, INPUT_WAV_LENS, MIN_SAMPLES,
                        OUTPUT_TOKEN_IDS, OUTPUT_TRANSCRIPT)
from .triton import BadRequest


class ChunkFailed(RuntimeError):
    """The ensemble failed on a chunk (not the request's fault)."""


async def transcribe_chunk(wav: np.ndarray, max_new_tokens: int, prompt: np.ndarray | None,
                           label: str) -> tuple[bytes, np.ndarray]:  # fmt: skip
    """(text, generated ids) of `wav` (1-D float32); a failure names the chunk by `label` ("chunk 0-1200 ms"):
    BadRequest where the ensemble refused it (a newer python backend keeps the code), else ChunkFailed."""
    wav = np.pad(wav, (0, max(0, MIN_SAMPLES - wav.size)))[None]
    inputs = [pb_utils.Tensor(INPUT_WAV, wav), pb_utils.Tensor(INPUT_WAV_LENS, np.array([[wav.shape[1]]], dtype=np.int32)),
              pb_utils.Tensor(INPUT_MAX_NEW_TOKENS, np.array([[max_new_tokens]], dtype=np.int32))]  # fmt: skip
    if prompt is not None:
        inputs.append(pb_utils.Tensor(INPUT_PROMPT, prompt))
    response = await pb_utils.InferenceRequest(model_name=ENSEMBLE, inputs=inputs,
                                               requested_output_names=[OUTPUT_TRANSCRIPT, OUTPUT_TOKEN_IDS]).async_exec()  # fmt: skip
    if response.has_error():
        error = response.error()
        message = f"{label}: {error.message()}"
        raise BadRequest(message) if error.code() == pb_utils.TritonError.INVALID_ARG else ChunkFailed(message)
    text = pb_utils.get_output_tensor_by_name(response, OUTPUT_TRANSCRIPT).as_numpy()[0, 0]
    return text, pb_utils.get_output_tensor_by_name(response, OUTPUT_TOKEN_IDS).as_numpy()[0]
