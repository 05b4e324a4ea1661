"""Batched greedy decoding of the exported Qwen3 decoder with ONNX Runtime: numpy only, no torch, so that
Triton python-backend models can import it.

Requests follow the tensorrt_llm backend's p-tuning convention (docs/SERVING.md#p-tuning-convention): an input id
>= vocab_size is row `id - vocab_size` of that request's own prompt table; the audio embeddings enter
the prompt that way. Prompts are left-padded with zero vectors and attention mask 0, and positions start
at 0 at each request's first real token (docs/MODEL.md#prompt-and-splice), so a request's tokens do not depend on what
else shares its batch (up to float rounding: other shapes, other summation order).

The KV cache stays in ONNX Runtime between steps (IOBinding): step t's present.{i} OrtValues are bound as
step t+1's past_key_values.{i}, and ORT allocates the outputs. Full-cache copies per decode step:
- inside the graph, 1: each layer's Concat of past and the new key/value into present (the exported
  graph's growing cache; removing it needs a graph that writes into a preallocated cache, not this one);
- across the Python boundary, 0 in both directions. session.run with numpy did the same under onnxruntime
  1.32 (contiguous fp32 inputs are wrapped, outputs come back as numpy views of ORT's buffers), but only
  by that bridge's behaviour; binding OrtValues makes it the contract, and no feed dict or 2 * layers
  numpy wrappers are built per step;
- when rows leave the batch (rare: only at a step where some row ends), 1: numpy gathers the kept rows
  and columns once (exact), and the gathered arrays are wrapped as OrtValues without another copy.
The graph already computes the logits of the last position only ([B, V]); greedy needs the argmax over
the whole vocabulary, so no narrower head is exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np


def input_names(num_layers: int) -> list[str]:
    """The decoder graph's inputs, in order (the contract is spelled out in export/decoder_onnx.py)."""
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return ["inputs_embeds", "attention_mask", "position_ids", *past]


def output_names(num_layers: int) -> list[str]:
    return ["logits", *(f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value"))]


@dataclass
class Request:
    input_ids: np.ndarray  # int [L]; ids >= vocab_size index prompt_table rows
    prompt_table: np.ndarray | None  # float [R, H]
    max_new_tokens: int
    end_id: int


def splice_fake_ids(prompt_ids, placeholder_id: int, n_audio_rows: int, vocab_size: int) -> np.ndarray:
    """Prompt ids with the single placeholder replaced by vocab_size .. vocab_size + n_audio_rows - 1 (int32,
    as the tensorrt_llm backend takes them); the audio embeddings are then the request's prompt table."""
    ids = np.asarray(prompt_ids, dtype=np.int32)
    (where,) = np.nonzero(ids == placeholder_id)
    if len(where) != 1:
        raise ValueError(f"expected exactly one placeholder {placeholder_id} in the prompt, found {len(where)}")
    fake = np.arange(vocab_size, vocab_size + n_audio_rows, dtype=np.int32)
    return np.concatenate([ids[: where[0]], fake, ids[where[0] + 1 :]])


class GreedyDecoder:
    def __init__(self, decoder_onnx_path, embeddings_npy_path, threads: int | None = None):
        """threads: ONNX Runtime intra-op threads (None: its default, one per physical core)."""
        import onnxruntime as ort  # here: the GPU image's adapter imports this module without onnxruntime

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._wrap = ort.OrtValue.ortvalue_from_numpy  # zero-copy on CPU; the OrtValue keeps the array alive
        self.session = ort.InferenceSession(os.fspath(decoder_onnx_path), options, providers=["CPUExecutionProvider"])
        self.embeddings = np.load(embeddings_npy_path, mmap_mode="r")  # [vocab, hidden], paged in on demand
        self.vocab_size, self.hidden = self.embeddings.shape
        inputs = self.session.get_inputs()
        self.num_layers = (len(inputs) - 3) // 2
        self.input_names, self.output_names = input_names(self.num_layers), output_names(self.num_layers)
        if [i.name for i in inputs] != self.input_names:
            raise ValueError(f"{decoder_onnx_path} does not have the decoder's inputs {self.input_names[:4]}...")
        _, self.kv_heads, _, self.head_dim = inputs[3].shape  # the cache's static dims

    def embed(self, request: Request) -> np.ndarray:
        """[L, H] fp32 rows: token embeddings for text ids, the request's prompt table for fake ids."""
        ids = np.asarray(request.input_ids, dtype=np.int64)
        if ids.ndim != 1 or len(ids) == 0 or ids.min() < 0:
            raise ValueError("input_ids must be a non-empty 1-D array of non-negative ids")
        fake = ids >= self.vocab_size
        rows = np.empty((len(ids), self.hidden), np.float32)
        rows[~fake] = self.embeddings[ids[~fake]]
        if fake.any():
            table = request.prompt_table
            if table is None or table.ndim != 2 or table.shape[1] != self.hidden:
                raise ValueError(f"ids >= vocab_size {self.vocab_size} need a prompt_table of shape [R, {self.hidden}]")
            if ids[fake].max() >= self.vocab_size + len(table):
                raise ValueError(f"fake id {ids[fake].max()} is past the prompt table's {len(table)} rows")
            rows[fake] = table[ids[fake] - self.vocab_size]
        return rows

    def generate(self, requests: list[Request],
                 on_tokens: Callable[[dict[int, int]], object] | None = None) -> list[list[int]]:  # fmt: skip
        """Greedy ids per request, without the end id: all requests prefilled together, then decoded one
        token per step, each row leaving the batch when it emits its end_id or reaches max_new_tokens.
        on_tokens: called after every step with that step's new tokens, {request index: token} (streaming)."""
        results: list[list[int]] = [[] for _ in requests]
        live = np.array([i for i, r in enumerate(requests) if r.max_new_tokens > 0], dtype=np.int64)
        if len(live) == 0:
            return results
        prompts = [self.embed(requests[i]) for i in live]
        width = max(len(p) for p in prompts)
        embeds = np.zeros((len(live), width, self.hidden), np.float32)
        mask = np.zeros((len(live), width), np.int64)
        for row, p in enumerate(prompts):
            embeds[row, width - len(p) :] = p
            mask[row, width - len(p) :] = 1
        positions = np.maximum(mask.cumsum(axis=1) - 1, 0)
        empty = self._wrap(np.zeros((len(live), self.kv_heads, 0, self.head_dim), np.float32))
        logits, cache = self._run(embeds, mask, positions, [empty] * (2 * self.num_layers))
        positions = positions[:, -1:]

        end_ids = np.array([r.end_id for r in requests])
        budgets = np.array([r.max_new_tokens for r in requests])
        while True:
            tokens = logits.argmax(axis=-1)
            keep = tokens != end_ids[live]
            step = {int(i): int(token) for i, token in zip(live[keep], tokens[keep])}
            for i, token in step.items():
                results[i].append(token)
            if on_tokens and step:
                on_tokens(step)
            keep &= np.array([len(results[i]) < budgets[i] for i in live])
            if not keep.any():
                return results
            if not keep.all():  # drop finished rows, then the padding columns no remaining row needs
                live, tokens, mask, positions = live[keep], tokens[keep], mask[keep], positions[keep]
                start = int(mask.argmax(axis=1).min())
                mask, cache = mask[:, start:], self._gather(cache, keep, start)
            mask = np.concatenate([mask, np.ones((len(live), 1), np.int64)], axis=1)
            positions = positions + 1
            embeds = self.embeddings[tokens][:, None]
            logits, cache = self._run(embeds, mask, positions, cache)

    def _run(self, embeds, mask, positions, cache: list) -> tuple[np.ndarray, list]:
        """One step: logits as numpy (a view of ORT's buffer), the present cache as OrtValues, to be bound
        as the next step's past as they are. A fresh binding each step: ORT allocates every output anew,
        never into a buffer that this step reads as its past."""
        binding = self.session.io_binding()
        for name, value in zip(self.input_names, (embeds, mask, positions)):
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in zip(self.input_names[3:], cache):
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name)
        self.session.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy(), present

    def _gather(self, cache: list, keep: np.ndarray, start: int) -> list:
        """The kept rows and the columns from `start`, as new OrtValues: one numpy copy (the OrtValues' numpy
        views share ORT's memory, and the result is wrapped as it is)."""
        return [self._wrap(np.ascontiguousarray(c.numpy()[keep, :, start:])) for c in cache]
