"""Long-form audio: Silero VAD (ONNX Runtime, no torch) and the streaming segmenter that cuts a recording of
any length into chunks the model takes (at most its 40 s), in pauses, identically for batch and live use."""

from .segmenter import Chunk, Segmenter, SegmenterOptions, StreamingSegmenter, segment, segment_frames
from .vad import FRAME_MS, FRAME_SAMPLES, SileroVad, model_path, speech_probabilities

__all__ = ["Chunk", "Segmenter", "SegmenterOptions", "StreamingSegmenter", "segment", "segment_frames",
           "FRAME_MS", "FRAME_SAMPLES", "SileroVad", "model_path", "speech_probabilities"]  # fmt: skip
