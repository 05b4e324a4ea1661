"""encoder.onnx run on clips (ONNX Runtime, numpy): shared by the ONNX pipeline and the CPU flavour's
Triton encoder, which imports nothing else of the pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .contract import INPUT_WAV, INPUT_WAV_LENS

if TYPE_CHECKING:
    import onnxruntime as ort


def encode(session: ort.InferenceSession, waveforms: list[np.ndarray]) -> list[np.ndarray]:
    """encoder.onnx over each clip on its own -> each clip's [T', H] embedding rows.

    Not one zero-padded batch: on CPU the padded frames cost as much as real ones while batching buys no
    speed (a clip's frames already fill the GEMMs; LibriVox-5 ran 26% faster one by one on a 2-core AVX2
    machine, benchmarks/README.md), and the int8 encoder's dynamic quantization scales each activation tensor
    by its whole batch, so batched clips would change each other's embeddings."""
    return [_encode_one(session, w) for w in waveforms]


def _encode_one(session: ort.InferenceSession, waveform: np.ndarray) -> np.ndarray:
    batch = np.ascontiguousarray(waveform, dtype=np.float32)[None]
    embeddings, rows = session.run(None, {INPUT_WAV: batch, INPUT_WAV_LENS: np.array([len(waveform)], np.int32)})
    return embeddings[0, : rows[0]]
