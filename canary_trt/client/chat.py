"""LLM mode over gRPC: a question about a recording (or a text-only question) to `canary_qwen_chat`.

    with TranscriptionClient("127.0.0.1:8001") as client:
        reply = client.ask("Summarize this call.", "call.flac")
        print(reply.transcript, reply.reasoning, reply.answer)
        for piece in client.ask_stream("What is said about the weather?", "call.flac", enable_thinking=False):
            print(piece.text if isinstance(piece, AnswerDelta) else f"\\n[{piece.finish_reason}]")

The model is decoupled, so every call is a gRPC stream: with `stream` the server sends the answer's text as
it grows (`AnswerDelta`: its kind, "reasoning" for Qwen3's <think> part or "answer", and the new text), and
always ends with the whole result (`Answer`). Tensors: QUESTION [1, 1] BYTES; WAV [1, samples] FP32 and
WAV_LENS [1, 1] INT32 with audio; MAX_NEW_TOKENS [1, 1] INT32, ENABLE_THINKING and STREAM [1, 1] BOOL when
given (docs/SERVING.md#llm-mode).
"""

from __future__ import annotations

import queue
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..contract import (CHAT_MODEL, INPUT_ENABLE_THINKING, INPUT_MAX_NEW_TOKENS, INPUT_QUESTION, INPUT_STREAM,
                        INPUT_WAV, INPUT_WAV_LENS, OUTPUT_ANSWER, OUTPUT_ANSWER_TOKEN_IDS, OUTPUT_DELTA_KIND,
                        OUTPUT_DELTA_TEXT, OUTPUT_FINISH_REASON, OUTPUT_PROMPT_TOKENS, OUTPUT_REASONING,
                        OUTPUT_TRANSCRIPT, OUTPUT_TRANSCRIPT_TOKEN_IDS, STREAM_REFUSAL)  # fmt: skip
from .tensors import infer_inputs

__all__ = ["CHAT_MODEL", "Answer", "AnswerDelta"]


@dataclass(frozen=True)
class AnswerDelta:
    kind: str  # "reasoning" (Qwen3's <think> part) or "answer"
    text: str


@dataclass
class Answer:
    answer: str
    reasoning: str | None  # the <think> part; None when the output had none (thinking off, or not begun)
    token_ids: list[int]  # every generated id, the reasoning's included
    transcript: str | None  # ASR mode's transcript of the audio; None for a text-only question
    transcript_token_ids: list[int]
    finish_reason: str  # "stop" (the end-of-turn token) or "length" (the new-token budget ran out)
    prompt_tokens: int  # the base LLM's prompt: the template, the question and the transcript
    latency_seconds: float = 0.0  # request sent -> final response received
    first_delta_seconds: float | None = None  # streamed: request sent -> first piece of text
    endpoint: str | None = None
    deltas: list[AnswerDelta] = field(default_factory=list, repr=False)  # streamed: as they came


def chat_request(module, question: str, samples: np.ndarray | None, enable_thinking: bool | None,
                 max_new_tokens: int | None, stream: bool) -> list:  # fmt: skip
    """The request's `InferInput`s; `module`: tritonclient.grpc or tritonclient.grpc.aio."""
    tensors = [(INPUT_QUESTION, np.array([[question.encode("utf-8")]], dtype=object), "BYTES"),
               (INPUT_STREAM, np.array([[stream]], dtype=bool), "BOOL")]  # fmt: skip
    if samples is not None:
        tensors += [(INPUT_WAV, samples[None].astype(np.float32), "FP32"),
                    (INPUT_WAV_LENS, np.array([[len(samples)]], dtype=np.int32), "INT32")]  # fmt: skip
    if max_new_tokens is not None:
        tensors.append((INPUT_MAX_NEW_TOKENS, np.array([[max_new_tokens]], dtype=np.int32), "INT32"))
    if enable_thinking is not None:
        tensors.append((INPUT_ENABLE_THINKING, np.array([[enable_thinking]], dtype=bool), "BOOL"))
    return infer_inputs(module, tensors)


def read_chat_response(result) -> AnswerDelta | Answer:
    """One response of the stream: a piece of text, or the final result (it alone has FINISH_REASON)."""
    if result.as_numpy(OUTPUT_FINISH_REASON) is None:
        return AnswerDelta(_text(result, OUTPUT_DELTA_KIND), _text(result, OUTPUT_DELTA_TEXT))
    transcript_ids = result.as_numpy(OUTPUT_TRANSCRIPT_TOKEN_IDS)  # absent, as TRANSCRIPT, without audio
    return Answer(
        answer=_text(result, OUTPUT_ANSWER), reasoning=_text(result, OUTPUT_REASONING),
        token_ids=result.as_numpy(OUTPUT_ANSWER_TOKEN_IDS).reshape(-1).tolist(),
        transcript=_text(result, OUTPUT_TRANSCRIPT),
        transcript_token_ids=[] if transcript_ids is None else transcript_ids.reshape(-1).tolist(),
        finish_reason=_text(result, OUTPUT_FINISH_REASON),
        prompt_tokens=int(result.as_numpy(OUTPUT_PROMPT_TOKENS).reshape(-1)[0]),
    )  # fmt: skip


def _text(result, name: str) -> str | None:
    """The response's string output `name`; None when the response does not carry it."""
    array = result.as_numpy(name)
    if array is None:
        return None
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _reply(result, error) -> AnswerDelta | Answer:
    """A stream's callback pair as what it carries, or its error raised (with_status)."""
    if error is not None:
        raise with_status(error)
    return read_chat_response(result)


def with_status(error):
    """A stream's error with the status a plain request's would have: the stream drops the code, and the chat
    model marks its refusals (contract.STREAM_REFUSAL) so that retry.classify tells them from failures."""
    from tritonclient.utils import InferenceServerException

    message = error.message() if isinstance(error, InferenceServerException) else str(error)
    if getattr(error, "status", lambda: None)() is None and STREAM_REFUSAL in message:
        return InferenceServerException(message, status="StatusCode.INVALID_ARGUMENT")
    return error


class StreamTimer:
    """Times one call's stream: the first piece of text and the final result, which gets the pieces too."""

    def __init__(self, endpoint: str):
        self.endpoint, self.start, self.first, self.deltas = endpoint, time.perf_counter(), None, []

    def take(self, item: AnswerDelta | Answer) -> AnswerDelta | Answer:
        elapsed = time.perf_counter() - self.start
        if isinstance(item, AnswerDelta):
            self.first = elapsed if self.first is None else self.first
            self.deltas.append(item)
        else:
            item.latency_seconds, item.first_delta_seconds = elapsed, self.first
            item.endpoint, item.deltas = self.endpoint, self.deltas
        return item


def stream_sync(triton, inputs: list, timeout: float | None) -> Iterator[AnswerDelta | Answer]:
    """One request on a tritonclient.grpc client's stream (one stream per client at a time: callers lock)."""
    replies: queue.Queue = queue.Queue()
    triton.start_stream(callback=lambda result, error: replies.put((result, error)), stream_timeout=timeout)
    try:
        triton.async_stream_infer(CHAT_MODEL, inputs)
        while True:
            item = _reply(*replies.get())
            yield item
            if isinstance(item, Answer):
                return
    finally:
        triton.stop_stream(cancel_requests=True)  # a caller that stopped early cancels the rest


async def stream_async(triton, inputs: list, timeout: float | None) -> AsyncIterator[AnswerDelta | Answer]:
    """One request on a tritonclient.grpc.aio client's stream_infer."""

    async def requests():
        yield {"model_name": CHAT_MODEL, "inputs": inputs}

    responses = triton.stream_infer(requests(), stream_timeout=timeout)
    try:
        async for result, error in responses:
            item = _reply(result, error)
            yield item
            if isinstance(item, Answer):
                return
    finally:
        responses.cancel()
