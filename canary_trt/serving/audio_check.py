"""`audio_check`: the ensemble's first step, in both flavours. Refuses bad audio with an error that
names the problem before any model runs (the GPU encoder is a TensorRT engine that cannot), and passes
good requests on. The CPU encoder applies the same rules when called directly.

Length buckets (`bucket_seconds` > 0, the GPU flavour): WAV is zero-padded up to the next multiple of the
bucket, WAV_LENS unchanged. Triton's dynamic batcher merges only requests of one shape, so without buckets
the TensorRT encoder would nearly always run one clip at a time; the encoder reads only the first WAV_LENS
samples of each row, so padding does not change its output (tested against the ONNX graph it is built from).
"""

from __future__ import annotations

import numpy as np

from ..contract import (INPUT_WAV, INPUT_WAV_LENS, MAX_AUDIO_SECONDS, MIN_AUDIO_SECONDS, MIN_SAMPLES, SAMPLE_RATE,
                        bucket_length)
from .triton import BadRequest, guarded, parameters, per_request, tensor


def max_seconds(args: dict) -> float:
    return float(parameters(args).get("max_audio_seconds", MAX_AUDIO_SECONDS))


def check_clips(wav: np.ndarray, wav_lens: np.ndarray, max_seconds: float) -> list[np.ndarray]:
    """A request's clips [b, N] cut to their WAV_LENS [b, 1], each checked; BadRequest names the problem."""
    if wav.ndim != 2 or wav_lens.shape != (wav.shape[0], 1):
        raise BadRequest(f"WAV must be [batch, samples] and WAV_LENS [batch, 1]; got {wav.shape} and {wav_lens.shape}")
    max_samples = round(max_seconds * SAMPLE_RATE)
    if wav.shape[1] > max_samples:  # before touching the samples: a huge request costs nothing more
        raise BadRequest(f"audio too long: WAV has {wav.shape[1]} samples ({wav.shape[1] / SAMPLE_RATE:.2f} s); "
                         f"the maximum is {max_seconds:g} s ({max_samples} samples at 16 kHz)")  # fmt: skip
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
            raise BadRequest(f"{name} has {int(np.count_nonzero(~np.isfinite(clip)))} non-finite samples (NaN or Inf)")
        if not clip.any():
            raise BadRequest(f"{name} is all zeros (silence)")
        clips.append(clip)
    return clips


class TritonPythonModel:
    def initialize(self, args):
        self.max_seconds = max_seconds(args)
        self.max_samples = round(self.max_seconds * SAMPLE_RATE)
        self.bucket_samples = round(float(parameters(args).get("bucket_seconds", "0")) * SAMPLE_RATE)

    def execute(self, requests):
        return guarded("audio_check", requests, lambda batch: per_request(batch, self.handle, "audio_check"))

    def handle(self, request) -> dict[str, np.ndarray]:
        wav, wav_lens = tensor(request, INPUT_WAV), tensor(request, INPUT_WAV_LENS)
        check_clips(wav, wav_lens, self.max_seconds)
        padded = bucket_length(wav.shape[1], self.bucket_samples, self.max_samples)
        if padded > wav.shape[1]:
            wav = np.pad(wav, ((0, 0), (0, padded - wav.shape[1])))
        return {"checked_wav": wav, "checked_wav_lens": wav_lens}
