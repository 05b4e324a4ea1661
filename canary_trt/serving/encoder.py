"""`encoder` (CPU flavour): WAV + WAV_LENS -> audio embeddings, encoder.onnx in ONNX Runtime.

The dynamic batcher hands over several requests at once; each clip then runs on its own (encoding.encode
says why). Each request is validated on its own first (audio_check's rules: a bad one is answered with its
error and leaves the batch); a failure of an ONNX Runtime run is answered as an error to every request of
that execute. The models read only tensors from requests: no request input is ever used as a path.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ..contract import INPUT_WAV, INPUT_WAV_LENS
from ..encoding import encode
from .audio_check import check_clips, max_seconds
from .triton import batched, build_manifest, guarded, parameters, tensor



class TritonPythonModel:
    def initialize(self, args):
        build, manifest = build_manifest(args)
        params = parameters(args)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("threads", "0"))
        self.session = ort.InferenceSession(str(build / manifest["encoder"]), options, providers=["CPUExecutionProvider"])
        self.max_seconds = max_seconds(args)  # the ensemble checked already; this model may be called directly

    def execute(self, requests):
        return guarded("encoder", requests, lambda batch: batched("encoder", batch, self.parse, self.run, _pack))

    def parse(self, request) -> list[np.ndarray]:
        return check_clips(tensor(request, INPUT_WAV), tensor(request, INPUT_WAV_LENS), self.max_seconds)

    def run(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        return encode(self.session, clips)


def _pack(clips, embeddings) -> dict[str, np.ndarray]:
    """A request's clips as [b, T'max, H] (zero rows past each clip's length) + their lengths [b, 1]."""
    lengths = np.array([[len(e)] for e in embeddings], dtype=np.int32)
    out = np.zeros((len(embeddings), lengths.max(), embeddings[0].shape[1]), dtype=np.float32)
    for i, e in enumerate(embeddings):
        out[i, : len(e)] = e
    return {"audio_embeddings": out, "audio_lengths": lengths}
