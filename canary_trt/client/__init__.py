"""The gRPC client side of canary-trt. Installs with `pip install .[client]` and never imports torch."""

from .api import AsyncTranscriptionClient, RetriesExhausted, RetryPolicy, Transcription, TranscriptionClient

__all__ = ["AsyncTranscriptionClient", "RetriesExhausted", "RetryPolicy", "Transcription", "TranscriptionClient"]
