"""The FastAPI app: OpenAI's `POST /v1/audio/transcriptions`, `GET /v1/models`, `GET /health`, forwarded to
the `canary_qwen` ensemble over gRPC with the package's async client; `POST /v1/chat/completions` (LLM mode,
to `canary_qwen_chat`) is in chat.py.

Admission: at most `max_in_flight` requests are sent to Triton at once (the client's slots), at most
`max_queue` more upload or wait for a slot; beyond that a request is refused at once with 429 rather
than piling up (in memory too: a file is read only once its request is admitted).

Triton endpoints: `triton_url` may name several replicas, as the gRPC client takes them (spread by least
in flight, an unreachable one taken out). A send that fails because its endpoint is unreachable or
overloaded is made once more at once (to another replica when there are several); after that the
request is answered with its error, and the caller (the official clients retry 429 and 5xx with backoff)
decides.

Long recordings: an upload's length is read from its header (in a worker thread, nothing decoded) and one
over `max_audio_seconds` is refused with a 400 before it is decoded; audio over 40 s (by that header length)
goes to `canary_qwen_long`, shorter audio to the ensemble with `max_new_tokens` (the long model sets each
segment's budget itself). Every answer has segments: verbose_json's `segments`, `srt` and `vtt` subtitles.

`stream=true` (response_format json or text): OpenAI's transcript.text.delta / transcript.text.done
server-sent events (streaming.py); the admission slot is held until the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ..client.api import MODEL, AsyncTranscriptionClient, RetryPolicy, Transcription
from ..client.subtitles import render as render_subtitles
from ..contract import MAX_AUDIO_SECONDS, SAMPLE_RATE
from .auth import require_key
from .chat import add_chat_routes
from .errors import SERVER_ERROR, ApiError, bad_request, from_transcription_failure, too_busy, triton_message
from .settings import MiB, Admission, Settings, known_model
from .streaming import stream_long, whole_text_events
from .uploads import admit_length, drain, read_body, too_large

FORM_OVERHEAD = MiB  # room for the other fields and the multipart framing around the file
RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
STREAMED_FORMATS = ("json", "text")  # OpenAI's streamed events carry text only
GRANULARITIES = "timestamp_granularities[]"
FIELDS = {"file", "model", "prompt", "response_format", "temperature", "language", "stream", GRANULARITIES}
# Parameters of OpenAI's API this model cannot honour, and why.
NOT_PROVIDED = {
    "include[]": "token log probabilities are not returned",
}
CENTISECONDS = 100  # verbose_json `seek`: the segment's start in 10-ms frames (module doc of _segment)
HEALTH_TIMEOUT = 5.0
FAILOVER = RetryPolicy(attempts=2, initial=0.0)  # one more send, at once: the caller owns backoff


@dataclass(frozen=True)
class Upload:
    audio: object  # the encoded file, or its samples when the header did not say its length (uploads.admit_length)
    long: bool  # over 40 s: canary_qwen_long, or canary_qwen_stream when streamed
    instruction: str | None
    response_format: str
    stream: bool
    filename: str | None


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # The gRPC aio channel belongs to the server's event loop: made here, closed on shutdown.
        app.state.client = AsyncTranscriptionClient(settings.triton_url, concurrency=settings.max_in_flight,
                                                    timeout=settings.timeout, retry=FAILOVER)  # fmt: skip
        yield
        await app.state.client.close()

    # With a key, nothing but /health answers without it: FastAPI's schema and docs pages are off too.
    closed = {"openapi_url": None, "docs_url": None, "redoc_url": None} if settings.api_key else {}
    app = FastAPI(title="canary-trt OpenAI-compatible transcription", lifespan=lifespan, **closed)
    admission = Admission(settings.max_in_flight + settings.max_queue)
    _install_error_handlers(app)

    def authorize(request: Request) -> None:
        if settings.api_key:
            require_key(request.headers.get("authorization"), settings.api_key)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])
    created = int(time.time())

    def model_card(name: str) -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "nvidia"}

    @v1.get("/models")
    async def list_models():
        return {"object": "list", "data": [model_card(name) for name in settings.models]}

    @v1.get("/models/{name:path}")
    async def get_model(name: str):
        return model_card(known_model(name, settings))

    @v1.post("/audio/transcriptions")
    async def transcriptions(request: Request):
        if admission.full:  # no await between this check and taking the slot: one event loop, no race
            await drain(request, 4 * (settings.max_file_bytes + FORM_OVERHEAD))  # so the caller reads the 429
            raise too_busy(f"too many requests: {admission.admitted} uploading, queued or in flight (the limit); "
                           "retry later")  # fmt: skip
        slot = admission.slot()
        slot.__enter__()  # held until the answer is sent: by a streamed one's body, else here
        streaming = False
        try:
            form = await _read_form(request, settings.max_file_bytes + FORM_OVERHEAD)
            try:
                upload = await read_upload(form)
            finally:
                await form.close()  # the upload's spooled temporary file
            client = request.app.state.client
            if upload.stream and upload.long:
                release = slot.__exit__  # idempotent: a context exits once
                response = await stream_long(client, upload.audio, upload.instruction, settings.triton_url,
                                             upload.filename, lambda: release(None, None, None))  # fmt: skip
                streaming = True
                return response
            result = await transcribe(client, upload)
        finally:
            if not streaming:
                slot.__exit__(None, None, None)
        return whole_text_events(result.text) if upload.stream else _render(result, upload.response_format)

    async def read_upload(form) -> Upload:
        """The request's audio and options, every problem refused by name before anything is decoded."""
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise bad_request("missing the audio: send it as the multipart file field 'file'", param="file")
        known_model(_field(form, "model", required=True), settings)
        response_format = _response_format(form)
        stream = _check_options(form, response_format)
        _check_granularities(form, response_format)
        audio = await upload.read()
        if len(audio) > settings.max_file_bytes:
            raise too_large("the file", len(audio), settings.max_file_bytes)
        # OpenAI's `prompt` (Whisper's context text) is sent as the model's instruction only when asked for.
        instruction = _field(form, "prompt") if settings.prompt_as_instruction else None
        try:
            audio, seconds = await admit_length(audio, settings.max_audio_seconds)
        except ApiError:
            raise
        except Exception as e:
            raise from_transcription_failure(e, settings.triton_url, upload.filename) from e
        # Routed by the header's length, as the client would by the decoded one.
        return Upload(audio, seconds > MAX_AUDIO_SECONDS, instruction, response_format, stream, upload.filename)

    async def transcribe(client: AsyncTranscriptionClient, upload: Upload) -> Transcription:
        # long_form stated explicitly so that max_new_tokens (the ensemble's only) goes with the model that takes it
        try:
            return await client.transcribe(
                upload.audio, None if isinstance(upload.audio, bytes) else SAMPLE_RATE, prompt=upload.instruction,
                long_form=upload.long, max_new_tokens=None if upload.long else settings.max_new_tokens)  # fmt: skip
        except Exception as e:
            raise from_transcription_failure(e, settings.triton_url, upload.filename) from e

    add_chat_routes(v1, settings, admission)  # LLM mode: canary_qwen_chat, in builds exported with --llm-mode
    app.include_router(v1)

    @app.get("/health")
    async def health(request: Request):
        """200 when Triton's `canary_qwen` ensemble is ready, else 503 with the reason."""
        try:
            ready = await asyncio.wait_for(request.app.state.client.triton.is_model_ready(MODEL), HEALTH_TIMEOUT)
        except Exception as e:
            reason = "no answer" if isinstance(e, TimeoutError) else triton_message(e)
            raise ApiError(503, f"Triton at {settings.triton_url} is unreachable: {reason}", type=SERVER_ERROR,
                           code="triton_unavailable") from e  # fmt: skip
        if not ready:
            raise ApiError(503, f"Triton at {settings.triton_url} has no ready model {MODEL!r}", type=SERVER_ERROR,
                           code="triton_unavailable")  # fmt: skip
        return {"status": "ok", "triton": settings.triton_url, "model": settings.model_name}

    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's (unknown route, wrong method, broken multipart), in OpenAI's shape."""

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        return error.response()

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        return ApiError(error.status_code, str(error.detail), headers=error.headers).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error: RequestValidationError):
        return bad_request(str(error)).response()

    @app.exception_handler(Exception)
    async def unexpected(request, error: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(error).__name__}: {error}", type=SERVER_ERROR).response()


async def _read_form(request: Request, limit: int):
    """The multipart form, its body read with at most `limit` bytes kept: a larger upload is 413, decided
    from Content-Length when sent, else while reading."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise bad_request("expected a multipart/form-data body with the audio in the file field 'file'")
    body = await read_body(request, limit, limit - FORM_OVERHEAD)

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    # Starlette turns a malformed multipart body into HTTPException(400): answered in OpenAI's shape.
    # (+2: timestamp_granularities[] may be sent once per value, segment and word)
    return await Request(request.scope, replay).form(max_files=1, max_fields=len(FIELDS) + len(NOT_PROVIDED) + 2)


def _field(form, name: str, required: bool = False) -> str | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        raise bad_request(f"'{name}' must be a text field, not a file", param=name)
    if required and not value:
        raise bad_request(f"missing required parameter '{name}'", param=name)
    return value


def _response_format(form) -> str:
    value = _field(form, "response_format") or "json"
    if value not in RESPONSE_FORMATS:
        raise bad_request(f"response_format {value!r} is not supported; use one of {', '.join(RESPONSE_FORMATS)}",
                          param="response_format")  # fmt: skip
    return value


def _check_granularities(form, response_format: str) -> None:
    """`timestamp_granularities[]`: `segment` (verbose_json only, as OpenAI requires); `word` is refused by
    name: the model gives no word timings."""
    values = form.getlist(GRANULARITIES)
    if any(isinstance(v, UploadFile) for v in values):
        raise bad_request(f"'{GRANULARITIES}' must be a text field, not a file", param=GRANULARITIES)
    for value in values:
        if value == "word":
            raise bad_request(f"{GRANULARITIES} 'word' is not supported: this model produces no word timestamps "
                              "(segment timestamps only: 'segment')", param=GRANULARITIES,
                              code="unsupported_granularity")  # fmt: skip
        if value != "segment":
            raise bad_request(f"{GRANULARITIES} {value!r} is not one of 'segment', 'word'", param=GRANULARITIES)
    if values and response_format != "verbose_json":
        raise bad_request(f"{GRANULARITIES} requires response_format=verbose_json, got {response_format!r}",
                          param=GRANULARITIES)  # fmt: skip


def _check_options(form, response_format: str) -> bool:
    """Options accepted for compatibility: `language` must be English, `temperature` a number in [0, 1]
    (decoding is greedy whatever it is); anything else is refused by name. Returns `stream` (true/false; true
    with response_format json or text only)."""
    for name in form:
        if name not in FIELDS:
            why = NOT_PROVIDED.get(name, "unknown to this server")
            raise bad_request(f"unsupported parameter '{name}': {why}", param=name)
    language = (_field(form, "language") or "en").strip().lower()
    if language not in ("en", "english") and not language.startswith(("en-", "en_")):
        raise bad_request(f"language {language!r} is not supported: this model transcribes English only ('en')",
                          param="language", code="unsupported_language")  # fmt: skip
    temperature = _field(form, "temperature")
    if temperature is not None:
        try:
            valid = 0.0 <= float(temperature) <= 1.0
        except ValueError:
            valid = False
        if not valid:
            raise bad_request(f"temperature must be a number between 0 and 1, got {temperature!r}", param="temperature")
    stream = (_field(form, "stream") or "false").strip().lower()
    if stream not in ("true", "1", "false", "0"):
        raise bad_request(f"stream must be true or false, got {stream!r}", param="stream")
    if stream in ("true", "1") and response_format not in STREAMED_FORMATS:
        raise bad_request(f"response_format {response_format!r} is not supported with stream=true: use "
                          f"{' or '.join(STREAMED_FORMATS)}", param="response_format")  # fmt: skip
    return stream in ("true", "1")


def _segment(index: int, segment) -> dict:
    """One verbose_json segment in OpenAI's fields. `seek`: in Whisper, the offset (in 10-ms mel frames) of the
    window the segment was decoded from; here every segment is decoded from its own window, which starts at
    the segment's start: seek is start_s in 10-ms frames (the encoder's frame rate too). `temperature` 0.0:
    decoding is greedy. `avg_logprob`, `compression_ratio`, `no_speech_prob`: null, the model gives none."""
    return {"id": index, "seek": round(segment.start_s * CENTISECONDS), "start": segment.start_s,
            "end": segment.end_s, "text": segment.text, "tokens": list(segment.token_ids), "temperature": 0.0,
            "avg_logprob": None, "compression_ratio": None, "no_speech_prob": None}  # fmt: skip


def _render(result: Transcription, response_format: str):
    if response_format == "text":
        return PlainTextResponse(result.text)
    if response_format in ("srt", "vtt"):
        return PlainTextResponse(render_subtitles(result.segments, response_format))
    if response_format == "verbose_json":
        # Segments, no words: the model gives segment times, no word timings.
        return {"task": "transcribe", "language": "english", "duration": round(result.audio_seconds, 3),
                "text": result.text, "segments": [_segment(i, s) for i, s in enumerate(result.segments)]}  # fmt: skip
    return {"text": result.text}
