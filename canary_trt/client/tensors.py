"""One request to the `canary_qwen` ensemble as tensors, and its answer back.

Inputs: `WAV` [1, samples] FP32 (16 kHz mono), `WAV_LENS` [1, 1] INT32, and optionally `PROMPT` [1, 1]
BYTES and `MAX_NEW_TOKENS` [1, 1] INT32. Outputs: `TRANSCRIPT` [1, 1] BYTES, `TOKEN_IDS` [1, tokens].

The instruction: the clients and the CLI call it `prompt` (`transcribe(..., prompt=)`, `--prompt`); it is
sent as the `PROMPT` tensor, and the model puts it in the user turn of its chat prompt, where the server side
and the reference pipeline call it the instruction (default "Transcribe the following:"). None: not sent,
the server's default applies.
"""

from __future__ import annotations

import numpy as np

from ..contract import (ENSEMBLE, INPUT_MAX_NEW_TOKENS, INPUT_PROMPT, INPUT_WAV, INPUT_WAV_LENS, OUTPUT_TOKEN_IDS,
                        OUTPUT_TRANSCRIPT)

MODEL = ENSEMBLE


def request_inputs(module, samples: np.ndarray, prompt: str | None, max_new_tokens: int | None) -> list:
    """The request's tritonclient `InferInput`s; `module`: tritonclient.grpc or tritonclient.grpc.aio."""
    tensors = [(INPUT_WAV, samples[None], "FP32"),
               (INPUT_WAV_LENS, np.array([[len(samples)]], dtype=np.int32), "INT32")]
    if prompt is not None:
        tensors.append((INPUT_PROMPT, np.array([[prompt.encode("utf-8")]], dtype=object), "BYTES"))
    if max_new_tokens is not None:
        tensors.append((INPUT_MAX_NEW_TOKENS, np.array([[max_new_tokens]], dtype=np.int32), "INT32"))
    inputs = []
    for name, value, dtype in tensors:
        tensor = module.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def read_response(response) -> tuple[str, list[int]]:
    """(transcript, token ids) of an `InferResult`."""
    text = response.as_numpy(OUTPUT_TRANSCRIPT).reshape(-1)[0]
    text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
    return text, response.as_numpy(OUTPUT_TOKEN_IDS).reshape(-1).tolist()
