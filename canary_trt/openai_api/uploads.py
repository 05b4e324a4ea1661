"""Reading what a caller uploads, bounded: the body (413 past its limit) and the audio's length from its header
(400 past --max-audio-seconds, before anything is decoded)."""

from __future__ import annotations

import asyncio

from fastapi import Request

from ..audio import AudioTooLong, audio_info, clock, load_audio
from ..contract import SAMPLE_RATE
from .errors import ApiError, bad_request
from .settings import MiB


async def read_body(request: Request, limit: int, audio_limit: int) -> bytes:
    """The body, at most `limit` bytes kept: a larger one is 413 (naming `audio_limit`, the audio's share),
    decided from Content-Length when sent, else while reading."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        await drain(request, 4 * limit)  # so the caller can read the answer instead of a reset connection
        raise too_large("the request body", int(declared), audio_limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large("the request body", len(body), audio_limit)
    return bytes(body)


async def admit_length(audio: bytes, max_seconds: float):
    """(what to send, its length in seconds): the header's length checked against `max_seconds` before anything
    is decoded (over it: a 400 naming it); a file whose header does not say is decoded here, in a worker thread,
    stopping as soon as it passes the limit."""
    info = await asyncio.to_thread(audio_info, audio)  # AudioError (undecodable): 415 by the caller
    if info.seconds is None:
        try:
            samples = await asyncio.to_thread(load_audio, audio, None, max_seconds=max_seconds)
        except AudioTooLong as e:
            raise bad_request(f"{e} (--max-audio-seconds)", param="file", code="audio_too_long") from e
        return samples, samples.size / SAMPLE_RATE
    if info.seconds > max_seconds:
        raise bad_request(f"the audio is {clock(info.seconds)} long ({info.seconds:.1f} s, from its header), over the "
                          f"{max_seconds:g} s limit (--max-audio-seconds); refused before decoding", param="file",
                          code="audio_too_long")  # fmt: skip
    return audio, info.seconds


async def drain(request: Request, at_most: int) -> None:
    read = 0
    async for chunk in request.stream():
        read += len(chunk)
        if read > at_most:
            return


def too_large(what: str, size: int, limit: int) -> ApiError:
    return ApiError(413, f"{what} is {size} bytes; audio files are limited to {limit} bytes "
                    f"({limit / MiB:g} MiB)", param="file", code="file_too_large")  # fmt: skip
