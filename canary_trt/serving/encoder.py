"""`encoder` (CPU flavour): WAV + WAV_LENS -> audio embeddings, encoder.onnx in ONNX Runtime.

Every clip the dynamic batcher hands over at once runs as one zero-padded batch. Each request is
validated on its own first (audio_check's rules: a bad one is answered with its error and leaves the
batch); a failure of the ONNX Runtime run itself is answered as an error to every request in that run. The models read only
tensors from requests: no request input is ever used as a path.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .audio_check import check_clips, max_seconds
from .triton import BadRequest, build_manifest, error, guarded, internal_error, parameters, respond, tensor



class TritonPythonModel:
    def initialize(self, args):
        build, manifest = build_manifest(args)
        params = parameters(args)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("threads", "0"))
        self.session = ort.InferenceSession(str(build / manifest["encoder"]), options, providers=["CPUExecutionProvider"])
        self.max_seconds = max_seconds(args)  # the ensemble checked already; this model may be called directly

    def execute(self, requests):
        return guarded("encoder", requests, self._execute)

    def _execute(self, requests):
        clips, owners, responses = [], [], [None] * len(requests)
        for index, request in enumerate(requests):
            try:
                for clip in check_clips(tensor(request, "WAV"), tensor(request, "WAV_LENS"), self.max_seconds):
                    clips.append(clip)
                    owners.append(index)
            except BadRequest as e:
                responses[index] = error(str(e))
            except Exception as e:  # a bug, not the client's fault: this request only
                responses[index] = internal_error("encoder", e)[0]
        if not clips:
            return responses
        owners = np.array(owners)
        served = np.unique(owners)
        try:
            lengths = np.array([len(c) for c in clips], dtype=np.int32)
            batch = np.zeros((len(clips), lengths.max()), dtype=np.float32)
            for i, clip in enumerate(clips):
                batch[i, : len(clip)] = clip
            embeddings, rows = self.session.run(None, {"WAV": batch, "WAV_LENS": lengths})
        except Exception as e:  # ONNX Runtime failed: every request of this run gets the error
            for index, response in zip(served, internal_error("encoder", e, len(served))):
                responses[index] = response
            return responses
        for index in served:
            mine = np.nonzero(owners == index)[0]
            width = rows[mine].max()
            responses[index] = respond({"audio_embeddings": embeddings[mine, :width], "audio_lengths": rows[mine, None]})
        return responses
