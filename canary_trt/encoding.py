"""encoder.onnx run on a batch of clips (ONNX Runtime, numpy): shared by the ONNX pipeline and the CPU flavour's
Triton encoder, which imports nothing else of the pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .contract import INPUT_WAV, INPUT_WAV_LENS

if TYPE_CHECKING:
    import onnxruntime as ort


def encode(session: ort.InferenceSession, waveforms: list[np.ndarray]) -> list[np.ndarray]:
    """encoder.onnx over the clips as one zero-padded batch -> each clip's own [T', H] embedding rows."""
    lengths = np.array([len(w) for w in waveforms], dtype=np.int32)
    batch = np.zeros((len(waveforms), lengths.max()), dtype=np.float32)
    for i, w in enumerate(waveforms):
        batch[i, : len(w)] = w
    embeddings, rows = session.run(None, {INPUT_WAV: batch, INPUT_WAV_LENS: lengths})
    return [e[:n] for e, n in zip(embeddings, rows)]
