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
- when rows leave the batch (only at a step where some row ends), 1: numpy gathers the kept rows and
  columns once (exact), and the gathered arrays are wrapped as OrtValues without another copy; when rows
  join a running batch (DecodeBatch.join), 1: the running and the new cache, left-padded to one width.
The graph already computes the logits of the last position only ([B, V]); greedy needs the argmax over
the whole vocabulary, so no narrower head is exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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

    def generate(self, requests: list[Request]) -> list[list[int]]:
        """Greedy ids per request, without the end id: all requests prefilled together, then decoded one
        token per step, each row leaving the batch when it emits its end_id or reaches max_new_tokens (the
        served decoders drive a DecodeBatch themselves, in flight: inflight.py)."""
        batch, results = DecodeBatch(self), {}
        _, done = batch.join(dict(enumerate(requests)))
        results.update(done)
        while batch:
            _, done = batch.step()
            results.update(done)
        return [results[i] for i in range(len(requests))]

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


class DecodeBatch:
    """The rows decoding together, keyed by the caller: their KV cache (OrtValues, left-padded to one width),
    attention mask, positions, and each row's last token, emitted and not yet fed. Requests join at a step
    boundary (each prefilled on its own, then padded into the running batch: in-flight batching) and leave as soon as
    they end. A row's tokens do not depend on what joins or leaves around it: padding is masked, positions are
    the row's own, and every exact copy (join, leave) moves whole rows and columns.

    join() and step() return that call's new tokens {key: token} and the rows that ended {key: their ids}."""

    def __init__(self, decoder: GreedyDecoder):
        self.decoder = decoder
        self.keys: list = []  # row -> key
        self.requests: dict = {}
        self.results: dict = {}
        self.cache: list = []
        self.mask = np.zeros((0, 0), np.int64)
        self.positions = np.zeros((0, 1), np.int64)
        self.tokens = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def join(self, requests: dict) -> tuple[dict, dict]:
        """Prefill `requests` {key: Request} (keys new to this batch) and add them to the running rows; nothing
        changes here if a prefill fails. Each prompt is prefilled on its own: prefill is arithmetic-bound on
        CPU, so padding prompts to the longest would cost as much per padded column as per real one, while a
        prompt's own tokens already fill the GEMMs (batch 4 ran at the same tokens per second as batch 1)."""
        done = {key: [] for key, r in requests.items() if r.max_new_tokens <= 0}
        keys = [key for key in requests if key not in done]
        if not keys:
            return {}, done
        prefilled = [self._prefill(requests[key]) for key in keys]  # (logits [1, V], cache, mask [1, length])
        # Every row left-padded to the widest, the running ones included: one exact copy of the whole cache
        # (none when one request starts an empty batch).
        width = max([self.mask.shape[1]] + [mask.shape[1] for _, _, mask in prefilled])
        parts = ([(self.cache, self.mask)] if self.keys else []) + [(cache, mask) for _, cache, mask in prefilled]
        wrap = self.decoder._wrap
        self.cache = parts[0][0] if len(parts) == 1 else [
            wrap(np.concatenate([_left_pad(c[layer].numpy(), width - m.shape[1]) for c, m in parts]))
            for layer in range(len(prefilled[0][1]))]  # fmt: skip
        self.mask = np.concatenate([_left_pad(m, width - m.shape[1]) for _, m in parts])
        self.positions = np.concatenate([self.positions, [[mask.shape[1] - 1] for _, _, mask in prefilled]])
        self.requests.update({key: requests[key] for key in keys})
        self.results.update({key: [] for key in keys})
        self.keys = self.keys + keys
        self.tokens = np.concatenate([self.tokens, np.zeros(len(keys), np.int64)])
        logits = np.concatenate([logits for logits, _, _ in prefilled])
        new, ended = self._emit(logits, first_row=len(self.keys) - len(keys))
        return new, {**done, **ended}

    def _prefill(self, request: Request) -> tuple[np.ndarray, list, np.ndarray]:
        d = self.decoder
        embeds = d.embed(request)[None]
        mask = np.ones(embeds.shape[:2], np.int64)
        empty = d._wrap(np.zeros((1, d.kv_heads, 0, d.head_dim), np.float32))
        logits, cache = d._run(embeds, mask, mask.cumsum(axis=1) - 1, [empty] * (2 * d.num_layers))
        return logits.copy(), cache, mask

    def step(self) -> tuple[dict, dict]:
        """Feed every row's last token: one new token per row."""
        d = self.decoder
        self.mask = np.concatenate([self.mask, np.ones((len(self), 1), np.int64)], axis=1)
        self.positions = self.positions + 1
        logits, self.cache = d._run(d.embeddings[self.tokens][:, None], self.mask, self.positions, self.cache)
        return self._emit(logits, first_row=0)

    def _emit(self, logits: np.ndarray, first_row: int) -> tuple[dict, dict]:
        """The rows from first_row take their argmax; rows that emit their end_id or reach their budget leave."""
        tokens = logits.argmax(axis=-1)
        self.tokens[first_row:] = tokens
        new, keep = {}, np.ones(len(self), bool)
        for row, token in enumerate(tokens.tolist(), start=first_row):
            key = self.keys[row]
            request, ids = self.requests[key], self.results[key]
            if token != request.end_id:
                ids.append(token)
                new[key] = token
            keep[row] = token != request.end_id and len(ids) < request.max_new_tokens
        return new, self._leave(keep)

    def _leave(self, keep: np.ndarray) -> dict:
        """Drop the rows not kept, then the padding columns no remaining row needs: one exact numpy copy of
        the kept cache (its numpy views share ORT's memory; the result is wrapped as it is)."""
        if keep.all():
            return {}
        ended = [key for key, kept in zip(self.keys, keep) if not kept]
        done = {key: self.results.pop(key) for key in ended}
        for key in ended:
            del self.requests[key]
        self.keys = [key for key, kept in zip(self.keys, keep) if kept]
        self.mask, self.positions, self.tokens = self.mask[keep], self.positions[keep], self.tokens[keep]
        start = int(self.mask.argmax(axis=1).min()) if self.keys else self.mask.shape[1]
        self.mask = self.mask[:, start:]
        wrap = self.decoder._wrap
        self.cache = [wrap(np.ascontiguousarray(c.numpy()[keep, :, start:])) for c in self.cache] if self.keys else []
        return done


def _left_pad(array: np.ndarray, columns: int) -> np.ndarray:
    """`columns` zero columns before axis -1 of a mask [B, T] or axis 2 of a cache [B, heads, T, dim]."""
    if columns <= 0:
        return array
    axis = 1 if array.ndim == 2 else 2
    shape = list(array.shape)
    shape[axis] = columns
    return np.concatenate([np.zeros(shape, array.dtype), array], axis=axis)
