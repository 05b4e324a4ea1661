"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the status codes the
official clients map to their exception types (400 BadRequestError, 401 AuthenticationError, 404
NotFoundError, 429 RateLimitError, 5xx InternalServerError, others APIStatusError)."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from ..client import retry

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = INVALID_REQUEST, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.body()}, status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def too_busy(message: str) -> ApiError:
    # Retry-After: the official clients honour it when they retry a 429.
    return ApiError(429, message, type="requests", code="rate_limit_exceeded", headers={"Retry-After": "1"})


def triton_message(error: BaseException) -> str:
    """A tritonclient error's message without its status prefix; str() of anything else."""
    message = getattr(error, "message", None)
    return message() if callable(message) else str(error)


def from_transcription_failure(error: Exception, triton_url: str, filename: str | None,
                               param: str = "file") -> ApiError:  # fmt: skip
    """What went wrong between the upload and Triton's answer, as the caller should see it: the client's
    classification of the failure (`retry.classify`), as an HTTP status; `param`: where the audio came in."""
    kind, message = retry.classify(error), triton_message(retry.last_error(error))  # retries: the last one tells why
    if kind == retry.UNREADABLE:
        source = "the audio" if filename is None else f"file {filename!r}"
        return ApiError(415, f"{source}: {message}; supported: wav, flac, ogg (vorbis/opus) and mp3",
                        param=param, code="unsupported_audio")  # fmt: skip
    if kind == retry.INVALID_INPUT:  # the audio or options refused by the model (audio_check etc.)
        return bad_request(message, param=param, code="invalid_request" if param != "file" else "invalid_audio")
    if kind == retry.OVERLOADED:
        return too_busy(f"the Triton server is overloaded: {message}")
    if kind == retry.UNAVAILABLE:
        return ApiError(503, f"the Triton server at {triton_url} is unavailable: {message}", type=SERVER_ERROR,
                        code="triton_unavailable")  # fmt: skip
    if kind == retry.TIMEOUT:
        return ApiError(504, f"Triton did not answer in time: {message}", type=SERVER_ERROR, code="timeout")
    return ApiError(500, f"transcription failed: {message}", type=SERVER_ERROR)
