"""`stream=true` on `POST /v1/audio/transcriptions`: OpenAI's server-sent transcription events.

Events (OpenAI's TranscriptionTextDeltaEvent / TranscriptionTextDoneEvent, as the official `openai` package
types them, openai/types/audio/transcription_text_{delta,done}_event.py): `data: {"type":
"transcript.text.delta", "delta": ...}` as text is decided, then `data: {"type": "transcript.text.done",
"text": ...}` with the whole text; the deltas joined are exactly that text, which is the non-streamed answer's.
No `logprobs` (the model gives none; include[] is refused) and no `usage` (the front does not count the
prompt's tokens).

A file up to 40 s is transcribed whole by `canary_qwen`, as without stream: one delta once it is done. A
longer one goes through `canary_qwen_stream`, sent as fast as the server takes it (not paced): a delta per
final segment as it is decided, a space before every delta but the first, empty texts skipped, as
`canary_qwen_long` joins its segments. Anything that fails before the first event is an HTTP error in
OpenAI's shape; a failure after it is an `{"error": ...}` event (the official clients raise it), and the
stream ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import numpy as np
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from ..audio import load_audio
from ..client.streaming import StreamSegment, chunked
from .errors import from_transcription_failure

CHUNK_MS = 1000  # a long file's audio per request to canary_qwen_stream
MEDIA_TYPE = "text/event-stream"


def event(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def delta(text: str) -> str:
    return event({"type": "transcript.text.delta", "delta": text})


def done(text: str) -> str:
    return event({"type": "transcript.text.done", "text": text})


def whole_text_events(text: str) -> Response:
    """A transcription already made (canary_qwen's) as its stream: one delta, then done."""
    return Response(delta(text) + done(text), media_type=MEDIA_TYPE)


async def stream_long(client, audio, instruction: str | None, triton_url: str, filename: str | None,
                      release) -> StreamingResponse:  # fmt: skip
    """A long recording through `canary_qwen_stream` as events; `release()` (the caller's admission slot, may
    run twice) once the stream has ended. The first delta is awaited here, so that a refusal is an HTTP error."""
    try:
        samples = audio if isinstance(audio, np.ndarray) else await asyncio.to_thread(load_audio, audio)
        segments = client.stream(chunked(samples, CHUNK_MS), prompt=instruction)
        first = await _next_text(segments)
    except Exception as e:
        raise from_transcription_failure(e, triton_url, filename) from e
    return StreamingResponse(_events(first, segments, triton_url, filename, release), media_type=MEDIA_TYPE,
                             background=BackgroundTask(release))  # fmt: skip


async def _next_text(segments: AsyncIterator[StreamSegment]) -> str | None:
    """The next final segment's text, skipping empty ones (no interims are asked for); None at the end."""
    async for segment in segments:
        if segment.is_final and segment.text:
            return segment.text
    return None


async def _events(first: str | None, segments: AsyncIterator[StreamSegment], triton_url: str, filename: str | None,
                  release) -> AsyncIterator[str]:  # fmt: skip
    texts = []
    try:
        text = first
        while text is not None:
            yield delta(f" {text}" if texts else text)
            texts.append(text)
            text = await _next_text(segments)
        yield done(" ".join(texts))
    except Exception as e:  # the status line is sent: the failure goes as an error event
        yield event({"error": from_transcription_failure(e, triton_url, filename).body()})
    finally:
        await segments.aclose()  # the gRPC stream and the client's slot, also when the caller went away
        release()
