"""Silero VAD in ONNX Runtime with numpy only: a speech probability per 32-ms frame, streamed or over an array.

The model file comes from the `silero-vad` wheel (pinned in pyproject.toml, extra "vad"), which is installed
without its dependencies: the package's own Python code imports torch, so it is never imported here; only its
packaged `silero_vad.onnx` is read. Every fact about the model's inputs below is from silero-vad 6.2.3,
`silero_vad/utils_vad.py`, class `OnnxWrapper` (read in the installed wheel), and the graph's own signature.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from ..contract import SAMPLE_RATE

FRAME_SAMPLES = 512  # OnnxWrapper.__call__: 512 samples per call at 16 kHz (256 at 8 kHz, unused here)
FRAME_MS = FRAME_SAMPLES * 1000 // SAMPLE_RATE  # 32: frame edges are whole milliseconds
CONTEXT_SAMPLES = 64  # OnnxWrapper.__call__: the previous call's last 64 samples are prepended at 16 kHz
STATE_SHAPE = (2, 1, 128)  # OnnxWrapper.reset_states: the recurrent state for batch 1, zeros at the start
MODEL_FILE = "silero_vad.onnx"  # model.load_silero_vad(onnx=True): the opset-16 graph in silero_vad.data


def model_path() -> Path:
    """The ONNX graph packaged in the silero-vad wheel, found without importing its (torch) code."""
    try:
        path = Path(str(resources.files("silero_vad.data").joinpath(MODEL_FILE)))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"{MODEL_FILE} not found: install the silero-vad wheel --no-deps "
                                "(pyproject.toml, extra 'vad'; ./build.sh --setup does)")  # fmt: skip
    return path


def open_session(path: str | Path | None = None):
    """One ONNX Runtime CPU session, single-threaded as OnnxWrapper sets it (a frame is far too small to split)."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path or model_path()), sess_options=opts,
                                        providers=["CPUExecutionProvider"])  # fmt: skip


class SileroVad:
    """Streaming VAD: `process` takes consecutive 512-sample frames and returns each one's speech probability.

    The state carries across calls, so a recording fed frame by frame, in any grouping, gives the same numbers.
    A session may be shared between instances (ONNX Runtime sessions are safe to run concurrently).
    """

    def __init__(self, session=None):
        self.session = session if session is not None else open_session()
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)  # the graph's `sr` input: an int64 scalar
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)

    def process(self, frame: np.ndarray) -> float:
        frame = np.asarray(frame, dtype=np.float32).reshape(-1)
        if frame.size != FRAME_SAMPLES:
            raise ValueError(f"a VAD frame is {FRAME_SAMPLES} samples at {SAMPLE_RATE} Hz, got {frame.size}")
        x = np.concatenate([self._context, frame])[None, :]  # [1, 64 + 512]
        prob, self._state = self.session.run(None, {"input": x, "state": self._state, "sr": self._sr})
        self._context = x[0, -CONTEXT_SAMPLES:]
        return float(prob[0, 0])


def frame_count(samples: int) -> int:
    """Frames covering `samples`: the last partial frame counts (it is zero-padded)."""
    return -(-samples // FRAME_SAMPLES)


def padded_frames(audio: np.ndarray) -> np.ndarray:
    """[frames, 512]: the audio cut into frames, the last one zero-padded as get_speech_timestamps pads it
    (silero-vad 6.2.3 utils_vad.py)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    out = np.zeros((frame_count(audio.size), FRAME_SAMPLES), dtype=np.float32)
    out.reshape(-1)[: audio.size] = audio
    return out


def speech_probabilities(audio: np.ndarray, vad: SileroVad | None = None) -> np.ndarray:
    """Per-frame speech probabilities (float32 [frames]) of a whole recording, from a fresh state."""
    vad = vad or SileroVad()
    vad.reset()
    return np.array([vad.process(frame) for frame in padded_frames(audio)], dtype=np.float32)


def frame_energy_db(frame: np.ndarray) -> float:
    """Mean power of a frame in dB re full scale; the floor keeps digital silence finite."""
    frame = np.asarray(frame, dtype=np.float64)
    return float(10.0 * np.log10(np.mean(frame * frame) + 1e-12)) if frame.size else -120.0
