"""One request to the `canary_qwen` ensemble (or to `canary_qwen_long`) as tensors, and its answer back.

Inputs: `WAV` [1, samples] FP32 (16 kHz mono), `WAV_LENS` [1, 1] INT32, and optionally `PROMPT` [1, 1]
BYTES and `MAX_NEW_TOKENS` [1, 1] INT32 (the ensemble only: `canary_qwen_long` sets each segment's budget from
its length). Outputs: `TRANSCRIPT` [1, 1] BYTES, `TOKEN_IDS` [1, tokens]; `canary_qwen_long`'s instead of
`TOKEN_IDS`: `SEGMENT_START_MS`, `SEGMENT_END_MS`, `SEGMENT_TEXT`, `SEGMENT_TOKEN_IDS` (concatenated),
`SEGMENT_TOKEN_COUNTS`, `SEGMENT_TRUNCATED`, each [1, segments] (docs/SERVING.md#long-recordings).

The instruction: the clients and the CLI call it `prompt` (`transcribe(..., prompt=)`, `--prompt`); it is
sent as the `PROMPT` tensor, and the model puts it in the user turn of its chat prompt, where the server side
and the reference pipeline call it the instruction (default "Transcribe the following:"). None: not sent,
the server's default applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..contract import (ENSEMBLE, INPUT_MAX_NEW_TOKENS, INPUT_PROMPT, INPUT_WAV, INPUT_WAV_LENS, LONG_FORM_MODEL,
                        OUTPUT_SEGMENT_END_MS, OUTPUT_SEGMENT_START_MS, OUTPUT_SEGMENT_TEXT,
                        OUTPUT_SEGMENT_TOKEN_COUNTS, OUTPUT_SEGMENT_TOKEN_IDS, OUTPUT_SEGMENT_TRUNCATED,
                        OUTPUT_TOKEN_IDS, OUTPUT_TRANSCRIPT, SAMPLE_RATE)  # fmt: skip

MODEL = ENSEMBLE
LONG_MODEL = LONG_FORM_MODEL
SAMPLES_PER_MS = SAMPLE_RATE // 1000


@dataclass
class Segment:
    """A stretch of the recording and its transcript: samples [start_s, end_s) x 16 kHz (whole ms)."""

    start_s: float
    end_s: float
    text: str
    token_ids: list[int] = field(default_factory=list)
    truncated: bool | None = False  # used its whole new-token budget, its text stops there; None: not known


def request_inputs(module, samples: np.ndarray, prompt: str | None, max_new_tokens: int | None) -> list:
    """The request's tritonclient `InferInput`s; `module`: tritonclient.grpc or tritonclient.grpc.aio."""
    tensors = [(INPUT_WAV, samples[None], "FP32"),
               (INPUT_WAV_LENS, np.array([[len(samples)]], dtype=np.int32), "INT32")]
    if prompt is not None:
        tensors.append((INPUT_PROMPT, np.array([[prompt.encode("utf-8")]], dtype=object), "BYTES"))
    if max_new_tokens is not None:
        tensors.append((INPUT_MAX_NEW_TOKENS, np.array([[max_new_tokens]], dtype=np.int32), "INT32"))
    return infer_inputs(module, tensors)


def infer_inputs(module, tensors: list[tuple[str, np.ndarray, str]]) -> list:
    """(name, value, Triton dtype) triples as `module`'s InferInputs."""
    inputs = []
    for name, value, dtype in tensors:
        tensor = module.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_response(response) -> tuple[str, list[int]]:
    """(transcript, token ids) of the ensemble's `InferResult`."""
    text = _text(response.as_numpy(OUTPUT_TRANSCRIPT).reshape(-1)[0])
    return text, response.as_numpy(OUTPUT_TOKEN_IDS).reshape(-1).tolist()


def whole_clip_segment(samples: int, text: str, token_ids: list[int], max_new_tokens: int | None) -> Segment:
    """The ensemble's answer as one segment over the clip, as `canary_qwen_long` gives it for such a clip: [0,
    the length rounded up to a whole ms]; truncated when it used the budget, None when the budget was the
    server's default (the ensemble does not say which it is)."""
    end_ms = -(-samples // SAMPLES_PER_MS)
    truncated = None if max_new_tokens is None else len(token_ids) >= max_new_tokens
    return Segment(0.0, end_ms / 1000, text, list(token_ids), truncated)


def read_long_response(response) -> tuple[str, list[int], list[Segment]]:
    """(transcript, every segment's token ids in order, segments) of `canary_qwen_long`'s `InferResult`."""
    def row(name):
        return response.as_numpy(name).reshape(-1)

    text = _text(row(OUTPUT_TRANSCRIPT)[0])
    ids, counts = row(OUTPUT_SEGMENT_TOKEN_IDS).tolist(), row(OUTPUT_SEGMENT_TOKEN_COUNTS).tolist()
    if sum(counts) != len(ids):
        raise ValueError(f"{LONG_MODEL}: SEGMENT_TOKEN_COUNTS sum to {sum(counts)}, SEGMENT_TOKEN_IDS has {len(ids)}")
    ends = np.cumsum(counts).tolist()
    segments = [Segment(start / 1000, end / 1000, _text(seg_text), ids[stop - n : stop], bool(truncated))
                for start, end, seg_text, n, stop, truncated in zip(
                    row(OUTPUT_SEGMENT_START_MS).tolist(), row(OUTPUT_SEGMENT_END_MS).tolist(), row(OUTPUT_SEGMENT_TEXT),
                    counts, ends, row(OUTPUT_SEGMENT_TRUNCATED).tolist(), strict=True)]  # fmt: skip
    return text, ids, segments
