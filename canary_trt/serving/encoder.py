"""`encoder` (CPU flavour): WAV + WAV_LENS -> audio embeddings, encoder.onnx in ONNX Runtime.

Every clip the dynamic batcher hands over at once runs as one zero-padded batch.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .triton import BadRequest, build_manifest, error, parameters, respond, tensor


class TritonPythonModel:
    def initialize(self, args):
        build, manifest = build_manifest(args)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters(args).get("threads", "0"))
        self.session = ort.InferenceSession(str(build / manifest["encoder"]), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        clips, owners, responses = [], [], [None] * len(requests)
        for index, request in enumerate(requests):
            try:
                for clip in _clips(tensor(request, "WAV"), tensor(request, "WAV_LENS")):
                    clips.append(clip)
                    owners.append(index)
            except BadRequest as e:
                responses[index] = error(str(e))
        if clips:
            lengths = np.array([len(c) for c in clips], dtype=np.int32)
            batch = np.zeros((len(clips), lengths.max()), dtype=np.float32)
            for i, clip in enumerate(clips):
                batch[i, : len(clip)] = clip
            embeddings, rows = self.session.run(None, {"WAV": batch, "WAV_LENS": lengths})
            owners = np.array(owners)
            for index in np.unique(owners):
                mine = np.nonzero(owners == index)[0]
                width = rows[mine].max()
                responses[index] = respond({"audio_embeddings": embeddings[mine, :width], "audio_lengths": rows[mine, None]})
        return responses


def _clips(wav: np.ndarray, wav_lens: np.ndarray) -> list[np.ndarray]:
    """A request's clips [b, N] cut to their WAV_LENS [b, 1]."""
    if wav.ndim != 2 or wav_lens.shape != (wav.shape[0], 1):
        raise BadRequest(f"WAV must be [batch, samples] and WAV_LENS [batch, 1]; got {wav.shape} and {wav_lens.shape}")
    clips = []
    for samples, (length,) in zip(wav, wav_lens):
        if not 0 < length <= samples.shape[0]:
            raise BadRequest(f"WAV_LENS {length} must be between 1 and the {samples.shape[0]} samples sent")
        clips.append(samples[:length])
    return clips
