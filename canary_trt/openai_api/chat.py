"""OpenAI's `POST /v1/chat/completions` for the model card's LLM mode, forwarded to `canary_qwen_chat`.

One user message: its text parts (joined with newlines) are the question, an `input_audio` part
(`{"data": base64, "format": "wav"|"mp3"|"flac"|"ogg"}`, at most one) the recording it is about; the model
answers from the recording's transcript ("{question}\\n\\n{transcript}", the model card's message). No audio:
the base LLM answers the question alone. NeMo's qwen prompt format has user and assistant turns only and the
served path is single-turn, so system/developer messages and earlier turns are refused by name.

Thinking: Qwen3 thinks by default; `chat_template_kwargs: {"enable_thinking": false}` turns it off as vLLM
takes it (the empty think block after the assistant prefix). The thinking text comes back as the message's
`reasoning_content` (null when the output had none), the rest as `content`. `stream=true`: server-sent
`chat.completion.chunk` events as the text grows (`delta.reasoning_content` / `delta.content`), the last
with `finish_reason`, then `data: [DONE]`; `stream_options.include_usage` adds the usage chunk. `usage`:
prompt_tokens are the base LLM's prompt (template, question, transcript), completion_tokens every generated
token (the reasoning's included). Decoding is greedy whatever `temperature`/`top_p` say.

A refusal found before the first token (the question, the budgets, the audio) is an HTTP error in OpenAI's
shape even when streaming; a failure after the stream began is sent as an `error` event, then [DONE].
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from ..client.api import Answer, AnswerDelta
from ..contract import SAMPLE_RATE
from .errors import ApiError, bad_request, from_transcription_failure, too_busy
from .settings import MiB, Admission, Settings, known_model
from .uploads import admit_length, drain, read_body, too_large

AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")
FIELDS = {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
          "top_p", "n", "chat_template_kwargs", "user", "seed"}  # fmt: skip
NOT_PROVIDED = {  # OpenAI's parameters this model cannot honour, and why
    "tools": "the model has no tool calling", "tool_choice": "the model has no tool calling",
    "functions": "the model has no tool calling", "function_call": "the model has no tool calling",
    "response_format": "the model has no structured output", "logprobs": "token log probabilities are not returned",
    "top_logprobs": "token log probabilities are not returned", "audio": "the model answers in text only",
    "modalities": "the model answers in text only", "stop": "generation stops at the end of the turn only",
}  # fmt: skip
JSON_OVERHEAD = MiB  # room for the messages' text and the JSON around the base64 audio


@dataclass(frozen=True)
class ChatRequest:
    question: str
    audio: bytes | None  # the encoded file, as uploaded
    enable_thinking: bool | None  # None: the server's default (on)
    max_new_tokens: int | None
    stream: bool
    include_usage: bool


def add_chat_routes(v1: APIRouter, settings: Settings, admission: Admission) -> None:
    # base64 is 4/3 of the bytes
    body_limit = -(-settings.max_file_bytes * 4 // 3) + JSON_OVERHEAD

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        if admission.full:
            await drain(request, 4 * body_limit)
            raise too_busy(f"too many requests: {admission.admitted} uploading, queued or in flight (the limit); "
                           "retry later")  # fmt: skip
        slot = admission.slot()
        slot.__enter__()  # held until the answer is sent: by a streamed one's body, else here
        streaming = False
        try:
            chat = parse_chat(_json(await read_body(request, body_limit, settings.max_file_bytes)), settings)
            pieces, first = await _start(request.app.state.client, chat, settings)
            completion = Completion(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), settings.model_name)
            if not chat.stream:
                await pieces.aclose()  # the final answer was its only piece; this frees the client's slot
                return completion.whole(first)
            streaming = True
            release = BackgroundTask(slot.__exit__, None, None, None)  # idempotent: a context exits once
            return StreamingResponse(completion.events(first, pieces, chat.include_usage, settings, slot),
                                     media_type="text/event-stream", background=release)  # fmt: skip
        finally:
            if not streaming:
                slot.__exit__(None, None, None)


async def _start(client, chat: ChatRequest, settings: Settings):
    """(the answer's pieces, the first of them): whatever fails before any text (the audio unreadable or too
    long, a refusal by the server) is an HTTP error in OpenAI's shape."""
    try:
        audio, rate = None, None
        if chat.audio is not None:
            audio, _ = await admit_length(chat.audio, settings.max_audio_seconds)
            rate = None if isinstance(audio, bytes) else SAMPLE_RATE
        pieces = client.ask_stream(chat.question, audio, rate, chat.enable_thinking, chat.max_new_tokens,
                                   stream=chat.stream)  # fmt: skip
        return pieces, await anext(pieces)
    except ApiError:
        raise
    except Exception as e:
        raise from_transcription_failure(e, settings.triton_url, None, param="messages") from e


class Completion:
    """One answer as OpenAI's chat.completion, or as its chat.completion.chunk events."""

    def __init__(self, id: str, created: int, model: str):
        self.id, self.created, self.model = id, created, model

    def whole(self, answer: Answer) -> dict:
        message = {"role": "assistant", "content": answer.answer, "reasoning_content": answer.reasoning}
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": answer.finish_reason, "logprobs": None}],
                "usage": usage(answer)}  # fmt: skip

    def chunk(self, delta: dict, finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return self._event({"choices": [choice]})

    def _event(self, fields: dict) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, **fields}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async def events(self, first, pieces, include_usage: bool, settings: Settings, slot):
        try:
            yield self.chunk({"role": "assistant", "content": ""})
            piece = first
            while True:
                if isinstance(piece, AnswerDelta):
                    field = "reasoning_content" if piece.kind == "reasoning" else "content"
                    yield self.chunk({field: piece.text})
                else:
                    yield self.chunk({}, piece.finish_reason)
                    if include_usage:
                        yield self._event({"choices": [], "usage": usage(piece)})
                    break
                piece = await anext(pieces)
        except Exception as e:  # the status line is sent: the failure goes as an error event
            error = from_transcription_failure(e, settings.triton_url, None, param="messages")
            yield f"data: {json.dumps({'error': error.body()}, ensure_ascii=False)}\n\n"
        finally:
            await pieces.aclose()  # the gRPC stream and the client's slot, also when the caller went away
            slot.__exit__(None, None, None)
        yield "data: [DONE]\n\n"


def usage(answer: Answer) -> dict:
    completion = len(answer.token_ids)
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": completion,
            "total_tokens": answer.prompt_tokens + completion}  # fmt: skip


def _json(body: bytes) -> dict:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(f"the body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise bad_request("the body must be a JSON object")
    return value


def parse_chat(body: dict, settings: Settings) -> ChatRequest:
    """The request's question, audio and options, every problem refused by name (400, 404 for the model)."""
    for name in body:
        if name not in FIELDS:
            raise bad_request(f"unsupported parameter '{name}': {NOT_PROVIDED.get(name, 'unknown to this server')}",
                              param=name)  # fmt: skip
    if not isinstance(body.get("model"), str):
        raise bad_request("missing required parameter 'model'", param="model")
    known_model(body["model"], settings)
    question, audio = _user_message(body.get("messages"), settings)
    if body.get("n", 1) != 1:
        raise bad_request("n must be 1: one answer per request", param="n")
    for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1)):
        value = body.get(name)
        if value is not None and not (isinstance(value, (int, float)) and low <= value <= high):
            raise bad_request(f"{name} must be a number between {low} and {high}, got {value!r}", param=name)
    tokens = [body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None]
    if tokens and not (isinstance(tokens[0], int) and not isinstance(tokens[0], bool) and tokens[0] >= 1):
        raise bad_request(f"max_completion_tokens must be a positive integer, got {tokens[0]!r}",
                          param="max_completion_tokens")  # fmt: skip
    stream, options = body.get("stream", False), body.get("stream_options") or {}
    if not isinstance(stream, bool):
        raise bad_request(f"stream must be true or false, got {stream!r}", param="stream")
    if not isinstance(options, dict) or set(options) - {"include_usage"} or not stream and options:
        raise bad_request("stream_options takes only include_usage, and only with stream=true", param="stream_options")
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict) or set(kwargs) - {"enable_thinking"} or \
            not isinstance(kwargs.get("enable_thinking", True), bool):  # fmt: skip
        raise bad_request("chat_template_kwargs takes only enable_thinking (true or false)", param="chat_template_kwargs")
    return ChatRequest(question, audio, kwargs.get("enable_thinking"), tokens[0] if tokens else None, stream,
                       bool(options.get("include_usage")))  # fmt: skip


def _user_message(messages, settings: Settings) -> tuple[str, bytes | None]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", param="messages")
    if len(messages) != 1 or not isinstance(messages[0], dict) or messages[0].get("role") != "user":
        roles = [m.get("role") if isinstance(m, dict) else type(m).__name__ for m in messages]
        raise bad_request(f"expected exactly one user message, got {roles}: LLM mode is one user turn (NeMo's qwen "
                          "prompt format has no system turn)", param="messages")  # fmt: skip
    content = messages[0].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise bad_request("the message's content must be a string or a list of content parts", param="messages")
    texts, audios = [], []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "input_audio":
            audios.append(_audio(part.get("input_audio"), settings))
        else:
            raise bad_request(f"unsupported content part {kind!r}: use 'text' and at most one 'input_audio'",
                              param="messages")  # fmt: skip
    if len(audios) > 1:
        raise bad_request(f"{len(audios)} input_audio parts: at most one recording per request", param="messages")
    question = "\n".join(texts)
    if not question.strip():
        raise bad_request("the user message has no text: send the question as a text part", param="messages")
    return question, audios[0] if audios else None


def _audio(value, settings: Settings) -> bytes:
    if not isinstance(value, dict) or not isinstance(value.get("data"), str):
        raise bad_request("input_audio must be {\"data\": base64, \"format\": ...}", param="messages")
    if value.get("format") not in AUDIO_FORMATS:
        raise bad_request(f"input_audio format {value.get('format')!r} is not one of {', '.join(AUDIO_FORMATS)}",
                          param="messages")  # fmt: skip
    if len(value["data"]) * 3 // 4 > settings.max_file_bytes + 2:  # before decoding it
        raise too_large("the input_audio", len(value["data"]) * 3 // 4, settings.max_file_bytes)
    try:
        return base64.b64decode(value["data"], validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("input_audio data is not valid base64", param="messages") from None
