"""Transcribe over gRPC with the `canary_qwen` ensemble of a canary-trt Triton server.

    from canary_trt.client import TranscriptionClient
    with TranscriptionClient("127.0.0.1:8001") as client:
        print(client.transcribe("speech.flac").text)

Audio may be a path, encoded bytes (wav/flac/ogg) or a numpy array with its sample rate; any rate and
channel count (downmixed, resampled to 16 kHz on the client). One request per clip; the server batches
concurrent requests. `AsyncTranscriptionClient` runs many at once with bounded concurrency.
Both expose the underlying tritonclient `InferenceServerClient` as `.triton` (metadata, statistics).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from ..audio import duration, load_audio

MODEL = "canary_qwen"


@dataclass
class Transcription:
    text: str
    token_ids: list[int]
    audio_seconds: float
    latency_seconds: float  # request sent -> response received


def _inputs(module, samples: np.ndarray, prompt: str | None, max_new_tokens: int | None) -> list:
    tensors = [("WAV", samples[None], "FP32"), ("WAV_LENS", np.array([[len(samples)]], dtype=np.int32), "INT32")]
    if prompt is not None:
        tensors.append(("PROMPT", np.array([[prompt.encode("utf-8")]], dtype=object), "BYTES"))
    if max_new_tokens is not None:
        tensors.append(("MAX_NEW_TOKENS", np.array([[max_new_tokens]], dtype=np.int32), "INT32"))
    inputs = []
    for name, value, dtype in tensors:
        tensor = module.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def _result(response, samples: np.ndarray, start: float) -> Transcription:
    text = response.as_numpy("TRANSCRIPT").reshape(-1)[0]
    return Transcription(
        text.decode("utf-8") if isinstance(text, bytes) else str(text),
        response.as_numpy("TOKEN_IDS").reshape(-1).tolist(),
        duration(samples),
        time.perf_counter() - start,
    )


class TranscriptionClient:
    def __init__(self, url: str = "127.0.0.1:8001", model: str = MODEL, timeout: float | None = None):
        import tritonclient.grpc as grpcclient

        self._module, self.model, self.timeout = grpcclient, model, timeout
        self.triton = grpcclient.InferenceServerClient(url)

    def transcribe(self, audio, sample_rate: int | None = None, prompt: str | None = None,
                   max_new_tokens: int | None = None) -> Transcription:  # fmt: skip
        samples = load_audio(audio, sample_rate)
        start = time.perf_counter()
        response = self.triton.infer(self.model, _inputs(self._module, samples, prompt, max_new_tokens),
                                     client_timeout=self.timeout)  # fmt: skip
        return _result(response, samples, start)

    def close(self) -> None:
        self.triton.close()

    def __enter__(self) -> "TranscriptionClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncTranscriptionClient:
    """asyncio variant: at most `concurrency` requests in flight at once.

    Audio is decoded inside a request's slot, in a worker thread: at most `concurrency` clips are held
    decoded at once, and decoding never stalls the replies of the requests in flight.
    """

    def __init__(self, url: str = "127.0.0.1:8001", model: str = MODEL, concurrency: int = 8,
                 timeout: float | None = None):  # fmt: skip
        import tritonclient.grpc.aio as grpcclient

        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._module, self.model, self.timeout = grpcclient, model, timeout
        self.triton = grpcclient.InferenceServerClient(url)
        self._slots = asyncio.Semaphore(concurrency)

    async def transcribe(self, audio, sample_rate: int | None = None, prompt: str | None = None,
                         max_new_tokens: int | None = None) -> Transcription:  # fmt: skip
        async with self._slots:
            samples = await asyncio.to_thread(load_audio, audio, sample_rate)
            start = time.perf_counter()
            response = await self.triton.infer(self.model, _inputs(self._module, samples, prompt, max_new_tokens),
                                               client_timeout=self.timeout)  # fmt: skip
        return _result(response, samples, start)

    async def transcribe_many(self, audios, return_exceptions: bool = False, **options) -> list:
        """Results in the order of `audios`. A failure raises the first exception, unless
        `return_exceptions`: then each failed clip's exception takes its place in the list."""
        return await asyncio.gather(*(self.transcribe(audio, **options) for audio in audios),
                                    return_exceptions=return_exceptions)  # fmt: skip

    async def close(self) -> None:
        await self.triton.close()

    async def __aenter__(self) -> "AsyncTranscriptionClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
