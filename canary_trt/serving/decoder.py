"""`decoder` (CPU flavour): the tensorrt_llm backend's tensor contract, served by batched greedy decoding
of decoder.onnx in ONNX Runtime. All requests handed over at once decode together with a KV cache;
each request's tokens do not depend on the others (decoding.py). The build's budgets bound every request
(prompt length, new tokens), as the TensorRT-LLM engine's max_input_len / max_seq_len do on GPU, so one
request cannot grow the KV cache without limit."""

from __future__ import annotations

import numpy as np

from ..contract import Budgets
from ..decoding import GreedyDecoder, Request
from .triton import BadRequest, batched, build_manifest, guarded, parameters, tensor


class TritonPythonModel:
    def initialize(self, args):
        build, manifest = build_manifest(args)
        threads = int(parameters(args).get("threads", "0")) or None
        self.decoder = GreedyDecoder(build / manifest["decoder"], build / manifest["embeddings"], threads)
        self.budgets = Budgets.from_manifest(manifest)

    def execute(self, requests):
        return guarded("decoder", requests, lambda batch: batched("decoder", batch, self.parse, self.decoder.generate, _pack))

    def parse(self, request) -> list[Request]:
        ids, lengths = tensor(request, "input_ids"), tensor(request, "input_lengths")
        new_tokens, end_ids = tensor(request, "request_output_len"), tensor(request, "end_id", required=False)
        tables, rows = tensor(request, "prompt_embedding_table", required=False), tensor(request, "prompt_vocab_size", required=False)
        top_k = tensor(request, "runtime_top_k", required=False)
        if end_ids is None:
            raise BadRequest("end_id is required by the CPU decoder")
        if top_k is not None and (top_k != 1).any():
            raise BadRequest(f"runtime_top_k {int(top_k.max())}: the CPU decoder decodes greedily (top_k 1) only")
        if (lengths > self.budgets.max_input_len).any():
            raise BadRequest(f"input_lengths {int(lengths.max())} is over this build's max_input_len {self.budgets.max_input_len}")
        if (new_tokens > self.budgets.max_new_tokens).any():
            raise BadRequest(f"request_output_len {int(new_tokens.max())} is over this build's max_new_tokens "
                             f"{self.budgets.max_new_tokens}")  # fmt: skip
        items = []
        for i in range(ids.shape[0]):
            row_ids = ids[i, : lengths[i]]
            table = None if tables is None else tables[i, : rows[i]]
            limit = 0 if table is None else len(table)
            if (row_ids >= self.decoder.vocab_size + limit).any() or (row_ids < 0).any():
                raise BadRequest(f"input_ids outside the vocabulary and the {limit}-row prompt table")
            items.append(Request(row_ids, table, int(new_tokens[i]), int(end_ids[i])))
        return items


def _pack(items: list[Request], generated: list[list[int]]) -> dict[str, np.ndarray]:
    """The tensorrt_llm backend's outputs: output_ids [batch, beam, tokens] (padded with end_id) and
    sequence_length [batch, beam]."""
    output = np.full((len(generated), 1, max(1, max(map(len, generated)))), items[0].end_id, dtype=np.int32)
    for i, ids in enumerate(generated):
        output[i, 0, : len(ids)] = ids
    return {"output_ids": output, "sequence_length": np.array([[len(ids)] for ids in generated], dtype=np.int32)}
