"""The front's settings, its admission count, and the model names it answers to."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ..contract import MAX_LONG_AUDIO_SECONDS
from ..errors import InvalidInput
from .errors import ApiError

MiB = 2**20


@dataclass(frozen=True)
class Settings:
    triton_url: str
    model_name: str = "canary-qwen-2.5b"
    aliases: tuple[str, ...] = ()  # more accepted `model` values, e.g. "whisper-1" for unchanged callers
    max_in_flight: int = 16
    max_queue: int = 64
    max_file_bytes: int = 25 * MiB  # OpenAI's limit
    max_new_tokens: int | None = None  # None: the server's default
    timeout: float = 300.0  # seconds per request at Triton
    prompt_as_instruction: bool = False  # OpenAI's `prompt` replaces the model's instruction (else ignored)
    api_key: str | None = None  # required as `Authorization: Bearer ...` on /v1 when set
    max_audio_seconds: float = MAX_LONG_AUDIO_SECONDS  # longer uploads (by their header) refused before decoding

    def __post_init__(self):
        if self.max_in_flight < 1 or self.max_queue < 0 or self.max_file_bytes < 1 or self.timeout <= 0:
            raise InvalidInput("max_in_flight and max_file_bytes must be at least 1, max_queue at least 0, timeout > 0")
        if not self.max_audio_seconds > 0:
            raise InvalidInput(f"max_audio_seconds must be a positive number of seconds, got {self.max_audio_seconds!r}")

    @property
    def models(self) -> tuple[str, ...]:
        return (self.model_name, *self.aliases)


class Admission:
    """Counts requests admitted (uploading, waiting for a slot or in flight at Triton), at most `limit`:
    admission comes before the upload is read, so the front holds at most `limit` files in memory."""

    def __init__(self, limit: int):
        self.limit, self.admitted = limit, 0

    @property
    def full(self) -> bool:
        return self.admitted >= self.limit

    @contextlib.contextmanager
    def slot(self):
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1


def known_model(name: str, settings: Settings) -> str:
    if name not in settings.models:
        raise ApiError(404, f"the model {name!r} does not exist here; served: {', '.join(settings.models)}",
                       param="model", code="model_not_found")  # fmt: skip
    return name
