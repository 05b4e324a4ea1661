"""`decoder` (CPU flavour): the tensorrt_llm backend's tensor contract, served by batched greedy decoding
of decoder.onnx in ONNX Runtime. All requests handed over at once decode together with a KV cache;
each request's tokens do not depend on the others (decoding.py)."""

from __future__ import annotations

import numpy as np

from ..decoding import GreedyDecoder, Request
from .triton import BadRequest, build_manifest, error, guarded, internal_error, parameters, respond, tensor


class TritonPythonModel:
    def initialize(self, args):
        build, manifest = build_manifest(args)
        threads = int(parameters(args).get("threads", "0")) or None
        self.decoder = GreedyDecoder(build / manifest["decoder"], build / manifest["embeddings"], threads)

    def execute(self, requests):
        return guarded("decoder", requests, self._execute)

    def _execute(self, requests):
        work, owners, responses = [], [], [None] * len(requests)
        for index, request in enumerate(requests):
            try:
                for item in self.parse(request):
                    work.append(item)
                    owners.append(index)
            except BadRequest as e:
                responses[index] = error(str(e))
            except Exception as e:  # a bug, not the client's fault: this request only
                responses[index] = internal_error("decoder", e)[0]
        if not work:
            return responses
        try:
            generated = self.decoder.generate(work)
        except Exception as e:  # ONNX Runtime failed: every request of this run gets the error
            served = sorted(set(owners))
            for index, response in zip(served, internal_error("decoder", e, len(served))):
                responses[index] = response
            return responses
        for index in set(owners):
            mine = [ids for ids, owner in zip(generated, owners) if owner == index]
            end = work[owners.index(index)].end_id
            output = np.full((len(mine), 1, max(1, max(map(len, mine)))), end, dtype=np.int32)  # [batch, beam, tokens]
            for i, ids in enumerate(mine):
                output[i, 0, : len(ids)] = ids
            lengths = np.array([[len(ids)] for ids in mine], dtype=np.int32)
            responses[index] = respond({"output_ids": output, "sequence_length": lengths})
        return responses

    def parse(self, request) -> list[Request]:
        ids, lengths = tensor(request, "input_ids"), tensor(request, "input_lengths")
        new_tokens, end_ids = tensor(request, "request_output_len"), tensor(request, "end_id", required=False)
        tables, rows = tensor(request, "prompt_embedding_table", required=False), tensor(request, "prompt_vocab_size", required=False)
        if end_ids is None:
            raise BadRequest("end_id is required by the CPU decoder")
        items = []
        for i in range(ids.shape[0]):
            row_ids = ids[i, : lengths[i]]
            table = None if tables is None else tables[i, : rows[i]]
            limit = 0 if table is None else len(table)
            if (row_ids >= self.decoder.vocab_size + limit).any() or (row_ids < 0).any():
                raise BadRequest(f"input_ids outside the vocabulary and the {limit}-row prompt table")
            items.append(Request(row_ids, table, int(new_tokens[i]), int(end_ids[i])))
        return items
