"""The exported CPU build run directly in ONNX Runtime, without a server: encoder.onnx, then the fake-id
splice and batched greedy decoding that the Triton CPU flavour serves (decoding.py). Torch-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .contract import CPU_GRAPHS, MAX_NEW_TOKENS
from .decoding import GreedyDecoder, Request, splice_fake_ids
from .encoding import encode
from .errors import InvalidInput
from .export_info import read_export_info
from .tokenizer import eos_id, load_tokenizer, placeholder_id


class OnnxPipeline:
    def __init__(self, build: str | Path, threads: int | None = None, precision: str | None = None):
        """precision: run that precision's graphs (contract.CPU_GRAPHS) instead of those the build serves, e.g.
        "fp32" in a quantized build (which keeps the fp32 graphs beside its own); None: the served ones."""
        build = Path(build)
        manifest = read_export_info(build)
        if precision is not None:
            if precision not in CPU_GRAPHS:
                raise InvalidInput(f"unknown CPU precision {precision!r}; choose one of {', '.join(CPU_GRAPHS)}")
            manifest.update(encoder=CPU_GRAPHS[precision]["encoder"], decoder=CPU_GRAPHS[precision]["decoder"])
        if manifest["target"] != "cpu":
            raise InvalidInput(f"{build} is a {manifest['target']} build; the onnx backend runs CPU builds")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.encoder = ort.InferenceSession(str(build / manifest["encoder"]), options, providers=["CPUExecutionProvider"])
        self.decoder = GreedyDecoder(build / manifest["decoder"], build / manifest["embeddings"], threads)
        self.tokenizer = load_tokenizer(build / manifest["tokenizer"])
        self.placeholder_id, self.eos_id = placeholder_id(self.tokenizer), eos_id(self.tokenizer)
        self.vocab_size = manifest["vocab_size"]

    def embed_audio(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        return encode(self.encoder, waveforms)

    def generate(self, embeddings: list[np.ndarray], prompt_ids: list[int], max_new_tokens: int = MAX_NEW_TOKENS,
                 force_length: bool = False) -> list[list[int]]:  # fmt: skip
        end_id = -1 if force_length else self.eos_id  # -1: no token ends the request
        requests = [
            Request(splice_fake_ids(prompt_ids, self.placeholder_id, len(e), self.vocab_size), e, max_new_tokens, end_id)
            for e in embeddings
        ]
        return self.decoder.generate(requests)
