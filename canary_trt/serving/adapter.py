"""`adapter`: audio embeddings -> one decoder request per clip, in the tensorrt_llm backend's terms.

The chat prompt (default instruction, or the request's PROMPT) has its placeholder replaced by fake ids
vocab_size .. vocab_size + T' - 1; the embeddings become the request's prompt table, in the type this model's
config declares for it (export/repository.py PROMPT_TABLE_TYPE): FP16 for the GPU flavour (python models
cannot carry BF16, and the TensorRT-LLM engine is built in FP16), FP32 unchanged for the CPU flavour, whose
fp32 decoder is then exact end to end. The build's budgets (export.json: prompt tokens, new tokens, audio
rows; the GPU engine is built for exactly these) are enforced here, by name, so both flavours refuse the
same requests with the same words.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from ..contract import INPUT_MAX_NEW_TOKENS, INPUT_PROMPT, MAX_PROMPT_BYTES, Budgets
from ..decoding import splice_fake_ids
from ..tokenizer import DEFAULT_INSTRUCTION, asr_prompt_ids, eos_id, load_tokenizer, pad_id, placeholder_id
from .triton import BadRequest, build_manifest, guarded, per_request, tensor

GREEDY_TOP_K = 1  # sent explicitly: the engine's sampling defaults are not greedy everywhere


class TritonPythonModel:
    def initialize(self, args):
        build, manifest = build_manifest(args)
        self.tokenizer = load_tokenizer(build / manifest["tokenizer"])
        self.placeholder_id, self.eos_id, self.pad_id = placeholder_id(self.tokenizer), eos_id(self.tokenizer), pad_id(self.tokenizer)
        self.vocab_size = manifest["vocab_size"]
        self.budgets = Budgets.from_manifest(manifest)
        self.table_dtype = output_dtype(json.loads(args["model_config"]), "prompt_embedding_table")
        self.prompt_ids = functools.lru_cache(maxsize=256)(self._prompt_ids)  # per instance: no hold on the class

    def _prompt_ids(self, instruction: str) -> tuple[int, ...]:
        try:
            ids = tuple(asr_prompt_ids(self.tokenizer, instruction))
        except ValueError as e:
            raise BadRequest(f"PROMPT: {e}") from None
        if len(ids) > self.budgets.max_prompt_tokens:
            raise BadRequest(f"PROMPT too long: the chat prompt is {len(ids)} tokens; this build's max_prompt_tokens "
                             f"is {self.budgets.max_prompt_tokens}")  # fmt: skip
        return ids

    def execute(self, requests):
        return guarded("adapter", requests, lambda batch: per_request(batch, self.handle, "adapter"))

    def handle(self, request) -> dict[str, np.ndarray]:
        embeddings, lengths = tensor(request, "audio_embeddings"), tensor(request, "audio_lengths")[:, 0]
        prompts, max_new = tensor(request, INPUT_PROMPT, required=False), tensor(request, INPUT_MAX_NEW_TOKENS, required=False)
        if lengths.max() > self.budgets.audio_rows:
            raise BadRequest(f"audio too long: {lengths.max()} audio embeddings; this build's audio_rows is "
                             f"{self.budgets.audio_rows} ({self.budgets.max_audio_seconds:g} s)")  # fmt: skip
        ids = []
        for i in range(len(lengths)):
            instruction = DEFAULT_INSTRUCTION if prompts is None else instruction_text(prompts[i, 0])
            ids.append(splice_fake_ids(self.prompt_ids(instruction), self.placeholder_id, int(lengths[i]), self.vocab_size))
        budget = self.budgets.max_new_tokens
        new_tokens = np.full(len(ids), budget, dtype=np.int32) if max_new is None else max_new[:, 0]
        if (new_tokens < 1).any():
            raise BadRequest(f"MAX_NEW_TOKENS must be at least 1, got {new_tokens.min()}")
        if (new_tokens > budget).any():
            raise BadRequest(f"MAX_NEW_TOKENS {new_tokens.max()} is over this build's max_new_tokens {budget}")
        input_ids = np.full((len(ids), max(map(len, ids))), self.pad_id, dtype=np.int32)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
        column = lambda values: np.asarray(values, dtype=np.int32).reshape(-1, 1)  # noqa: E731
        return {
            "input_ids": input_ids,
            "input_lengths": column([len(row) for row in ids]),
            "request_output_len": column(new_tokens),
            "end_id": column([self.eos_id] * len(ids)),
            "pad_id": column([self.pad_id] * len(ids)),
            "prompt_embedding_table": embeddings[:, : lengths.max()].astype(self.table_dtype, copy=False),
            "prompt_vocab_size": column(lengths),
            "runtime_top_k": column([GREEDY_TOP_K] * len(ids)),
        }


def output_dtype(config: dict, name: str) -> np.dtype | None:
    """The numpy type of the config's output `name` (the config, filled per flavour, is the one source), or
    None where the config has no such output (canary_qwen_long, which reuses this model's PROMPT check only)."""
    output = pb_utils.get_output_config_by_name(config, name)
    return None if output is None else np.dtype(pb_utils.triton_string_to_numpy(output["data_type"]))


def instruction_text(value) -> str:
    """The request's instruction: plain text only (never a path: nothing is opened from it)."""
    raw = value if isinstance(value, bytes) else str(value).encode()
    if len(raw) > MAX_PROMPT_BYTES:
        raise BadRequest(f"PROMPT too long: {len(raw)} bytes; the limit is {MAX_PROMPT_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("PROMPT is not valid UTF-8") from None
    if not text.strip():
        raise BadRequest("PROMPT is empty (no text): send an instruction or leave PROMPT out for the default")
    return text
