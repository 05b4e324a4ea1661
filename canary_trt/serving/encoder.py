"""`encoder` (CPU flavour): WAV + WAV_LENS -> audio embeddings, encoder.onnx in ONNX Runtime.

Every clip the dynamic batcher hands over at once runs as one zero-padded batch. Each request is
validated on its own first (a bad one is answered with its error and leaves the batch); a failure of the
ONNX Runtime run itself is answered as an error to every request in that run. The models read only
tensors from requests: no request input is ever used as a path.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .triton import BadRequest, build_manifest, error, guarded, internal_error, parameters, respond, tensor

SAMPLE_RATE = 16000
MIN_AUDIO_SECONDS = 0.1  # the GPU engine profile's minimum too; < 160 samples give no mel frame at all
MIN_SAMPLES = round(MIN_AUDIO_SECONDS * SAMPLE_RATE)
MAX_AUDIO_SECONDS = 40.0  # when the config names none: the model's training clips are at most 40 s


class TritonPythonModel:
    def initialize(self, args):
        build, manifest = build_manifest(args)
        params = parameters(args)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("threads", "0"))
        self.session = ort.InferenceSession(str(build / manifest["encoder"]), options, providers=["CPUExecutionProvider"])
        self.max_seconds = float(params.get("max_audio_seconds", MAX_AUDIO_SECONDS))
        self.max_samples = round(self.max_seconds * SAMPLE_RATE)

    def execute(self, requests):
        return guarded("encoder", requests, self._execute)

    def _execute(self, requests):
        clips, owners, responses = [], [], [None] * len(requests)
        for index, request in enumerate(requests):
            try:
                for clip in self.clips(tensor(request, "WAV"), tensor(request, "WAV_LENS")):
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

    def clips(self, wav: np.ndarray, wav_lens: np.ndarray) -> list[np.ndarray]:
        """A request's clips [b, N] cut to their WAV_LENS [b, 1], each checked."""
        if wav.ndim != 2 or wav_lens.shape != (wav.shape[0], 1):
            raise BadRequest(f"WAV must be [batch, samples] and WAV_LENS [batch, 1]; got {wav.shape} and {wav_lens.shape}")
        limit = f"the maximum is {self.max_seconds:g} s ({self.max_samples} samples at 16 kHz)"
        if wav.shape[1] > self.max_samples:  # before touching the samples: a huge request costs nothing more
            raise BadRequest(f"audio too long: WAV has {wav.shape[1]} samples ({wav.shape[1] / SAMPLE_RATE:.2f} s); {limit}")
        clips = []
        for i, (samples, (length,)) in enumerate(zip(wav, wav_lens)):
            name = "audio" if len(wav) == 1 else f"clip {i}"
            if length < 0 or length > samples.shape[0]:
                raise BadRequest(f"WAV_LENS {length} out of range: must be between 1 and the {samples.shape[0]} samples sent in WAV")
            if length == 0:
                raise BadRequest(f"{name} is empty (0 samples)")
            if length < MIN_SAMPLES:
                raise BadRequest(f"{name} too short: {length} samples; the minimum is {MIN_AUDIO_SECONDS:g} s "
                                 f"({MIN_SAMPLES} samples at 16 kHz)")  # fmt: skip
            clip = samples[:length]
            if not np.isfinite(clip).all():
                bad = int(np.count_nonzero(~np.isfinite(clip)))
                raise BadRequest(f"{name} has {bad} non-finite samples (NaN or Inf)")
            if not clip.any():
                raise BadRequest(f"{name} is all zeros (silence)")
            clips.append(clip)
        return clips
