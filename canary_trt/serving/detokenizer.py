"""`detokenizer`: generated ids -> TRANSCRIPT and TOKEN_IDS (cut at the first end-of-turn id)."""

from __future__ import annotations

import numpy as np

from ..contract import OUTPUT_TOKEN_IDS, OUTPUT_TRANSCRIPT
from ..tokenizer import decode, eos_id, load_tokenizer, pad_id
from .triton import build_manifest, guarded, per_request, tensor


class TritonPythonModel:
    def initialize(self, args):
        build, manifest = build_manifest(args)
        self.tokenizer = load_tokenizer(build / manifest["tokenizer"])
        self.eos_id, self.pad_id = eos_id(self.tokenizer), pad_id(self.tokenizer)

    def execute(self, requests):
        return guarded("detokenizer", requests, lambda batch: per_request(batch, self.handle, "detokenizer"))

    def handle(self, request) -> dict[str, np.ndarray]:
        output_ids, lengths = tensor(request, "output_ids"), tensor(request, "sequence_length")
        sequences = []
        for ids, length in zip(output_ids[:, 0], lengths[:, 0]):  # beam 0: greedy
            ids = ids[:length].tolist()
            sequences.append(ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids)
        texts = np.array([[decode(self.tokenizer, ids).encode("utf-8")] for ids in sequences], dtype=object)
        token_ids = np.full((len(sequences), max(1, max(map(len, sequences)))), self.pad_id, dtype=np.int32)
        for i, ids in enumerate(sequences):
            token_ids[i, : len(ids)] = ids
        if not any(sequences):
            token_ids = token_ids[:, :0]
        return {OUTPUT_TRANSCRIPT: texts, OUTPUT_TOKEN_IDS: token_ids}
