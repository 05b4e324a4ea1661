"""What a failed request means: whether to send it again (`RetryPolicy`), and what kind of failure it was
(`classify`), the one rule the bench's `error_kind`, the OpenAI front's status codes and
`benchmarks/load_test.py`'s rejected/failed all follow.

Retries: a request that failed because the server could not take it (gRPC UNAVAILABLE: connection refused
or reset, server shutting down, or Triton's overload rejections "Exceeds maximum queue size" / "Request
timeout expired"; RESOURCE_EXHAUSTED only with such an overload message) is sent again after 0.5, 1, 2,
4 s (doubling, capped at 8 s), 5 attempts in all by default; then `RetriesExhausted` is raised, naming
the attempts and the last error. Anything else (INVALID_ARGUMENT: the request's own fault, a client
timeout, an unreadable file) is not retried: the server's error is raised as it came.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..audio import AudioError
from ..errors import InvalidInput

RETRYABLE_STATUSES = ("StatusCode.UNAVAILABLE",)  # server unreachable, restarting, shutting down or overloaded
OVERLOAD_STATUSES = ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED")
OVERLOAD_MESSAGES = ("exceeds maximum queue size", "request timeout expired", "overload", "queue is full")

# Failure kinds (plain strings: they go into reports and JSON as they are).
UNREADABLE = "unreadable"  # the audio could not be read or decoded
UNAVAILABLE = "unavailable"  # no server could be reached
OVERLOADED = "overloaded"  # Triton refused it for lack of room
INVALID_INPUT = "invalid input"  # Triton refused the request itself (INVALID_ARGUMENT)
TIMEOUT = "timeout"  # not answered within the client's timeout (DEADLINE_EXCEEDED)
SERVER_ERROR = "server error"  # any other gRPC status
CLIENT_ERROR = "client error"  # anything else raised on this side


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: attempt n (1-based) that failed retryably is followed by a pause of
    `initial * factor**(n-1)` seconds, capped at `max_delay`, until `attempts` have been made."""

    attempts: int = 5
    initial: float = 0.5
    factor: float = 2.0
    max_delay: float = 8.0

    def __post_init__(self):
        if self.attempts < 1 or self.initial < 0 or self.factor < 1 or self.max_delay < 0:
            raise InvalidInput(f"invalid retry policy {self}")

    def delays(self) -> list[float]:
        """The pauses between attempts: attempts - 1 of them."""
        return [self.delay(n) for n in range(1, self.attempts)]

    def delay(self, n: int) -> float:
        """The n-th pause (1-based)."""
        return min(self.initial * self.factor ** (n - 1), self.max_delay)

    def give_up_unless_retryable(self, error: Exception, attempt: int) -> None:
        """After failed attempt `attempt`: raise `error` itself if retrying cannot help (e.g. bad input),
        RetriesExhausted after the last attempt; return to retry."""
        if not is_retryable(error):
            raise error
        if attempt >= self.attempts:
            raise RetriesExhausted(attempt, error) from error


def status_of(error: BaseException) -> str | None:
    """The gRPC status of a tritonclient error, e.g. "StatusCode.UNAVAILABLE"; None for other errors."""
    status = getattr(error, "status", None)
    return status() if callable(status) else None


def is_overload(error: BaseException) -> bool:
    """Triton refused the request for lack of room (queue full, or it waited in the queue too long)."""
    message = str(error).lower()
    return status_of(error) in OVERLOAD_STATUSES and any(m in message for m in OVERLOAD_MESSAGES)


def is_retryable(error: BaseException) -> bool:
    """Worth sending again: the server was unreachable/unavailable or explicitly overloaded. Not: bad input
    (INVALID_ARGUMENT), internal errors, client-side deadlines (DEADLINE_EXCEEDED), cancellations, audio errors."""
    return status_of(error) in RETRYABLE_STATUSES or is_overload(error)


class RetriesExhausted(Exception):
    """A retryable error persisted through every attempt; `.last` is the final one."""

    def __init__(self, attempts: int, last: BaseException):
        self.attempts, self.last, self.overload = attempts, last, is_overload(last)
        kind = "overloaded" if self.overload else "unavailable"
        super().__init__(f"server {kind}, gave up after {attempts} attempt(s): {last}")


def last_error(error: BaseException) -> BaseException:
    """The error that decided: the last attempt's when retries ran out, else `error` itself."""
    return error.last if isinstance(error, RetriesExhausted) else error


def classify(error: BaseException) -> str:
    """The kind of failure a transcription request ended with (one of the kinds above)."""
    error = last_error(error)
    if isinstance(error, AudioError):
        return UNREADABLE
    status = status_of(error)
    if status == "StatusCode.INVALID_ARGUMENT":  # the audio or options refused by the model (audio_check etc.)
        return INVALID_INPUT
    if is_overload(error):
        return OVERLOADED
    if status == "StatusCode.UNAVAILABLE":
        return UNAVAILABLE
    if status == "StatusCode.DEADLINE_EXCEEDED":  # the client's timeout: the server may still be at it
        return TIMEOUT
    return SERVER_ERROR if status else CLIENT_ERROR


@dataclass(frozen=True)
class Failure:
    """Why a request failed, as reports show it: `text` (str() gives it) and its `kind`."""

    text: str
    kind: str

    @classmethod
    def of(cls, error: BaseException) -> Failure:
        return cls(f"{type(error).__name__}: {error}", classify(error))

    def __str__(self) -> str:
        return self.text
