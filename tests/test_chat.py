"""Live, on CPU: LLM mode served (`canary_qwen_chat` over `llm_decoder`) on the real tritonserver, through the
gRPC clients and the OpenAI front's /v1/chat/completions with the official openai client; tiny random
checkpoint exported with --llm-mode.

Token-exact against NeMo: `Reference.llm_mode` is proven equal to NeMo's SALM (ASR ids with the LoRA on, then
`generate` under `disable_adapter()`) in test_llm_mode.py; the served ids equal it with thinking on, off, and
for a text-only question. A long recording's transcript is canary_qwen_long's segments as NeMo decodes them.
Streams: the pieces joined per kind are the final reasoning and answer. Bad requests are refused by name
and the server serves on."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
import soundfile as sf

from canary_trt.client import Answer, AnswerDelta, AsyncTranscriptionClient, TranscriptionClient
from canary_trt.contract import FINISH_LENGTH, LIBRIVOX_DIR, LlmBudgets
from canary_trt.llm_mode import llm_prompt_ids, transcript_text
from canary_trt.tokenizer import load_tokenizer

QUESTION = "What is the speaker talking about?"
N = 12  # new tokens: random weights never stop by themselves
CLIP = LIBRIVOX_DIR / "sense_and_sensibility_01_austen_64kb-0880.wav"


@pytest.fixture(scope="module")
def llm_server(llm_build):
    from canary_trt.server import TritonServer

    with TritonServer(llm_build / "model_repository") as running:
        yield running


@pytest.fixture(scope="module")
def tokenizer(llm_build):
    return load_tokenizer(llm_build / "tokenizer")


@pytest.fixture(scope="module")
def want(reference, clips):
    """NeMo-exact ids: (thinking on, thinking off, text only)."""
    return (reference.llm_mode(clips["0880"], QUESTION, True, N), reference.llm_mode(clips["0880"], QUESTION, False, N),
            reference.llm_mode(None, QUESTION, True, N))  # fmt: skip


@pytest.fixture(scope="module")
def answers(llm_server, clips) -> dict[str, Answer]:
    with TranscriptionClient(llm_server.grpc_url) as client:
        return {"on": client.ask(QUESTION, clips["0880"], 16000, max_new_tokens=N),
                "off": client.ask(QUESTION, clips["0880"], 16000, enable_thinking=False, max_new_tokens=N),
                "text": client.ask(QUESTION, max_new_tokens=N)}  # fmt: skip


def test_answers_are_nemo_exact(answers, want, tokenizer):
    for key, expected in zip(("on", "off", "text"), want, strict=True):
        got = answers[key]
        assert got.token_ids == expected.answer_ids, key
        assert got.prompt_tokens == len(expected.prompt_ids), key
        assert got.finish_reason == FINISH_LENGTH  # N tokens, no end of turn (random weights)
        assert got.reasoning is None and got.answer == tokenizer.decode(got.token_ids)  # no <think> opened it
    assert answers["on"].transcript_token_ids == want[0].transcript_ids
    assert answers["on"].transcript == transcript_text(tokenizer, want[0].transcript_ids)
    assert answers["text"].transcript is None and answers["text"].transcript_token_ids == []
    assert len({tuple(a.token_ids) for a in answers.values()}) == 3  # the think block and the audio matter


def test_streamed_pieces_join_to_the_answer(llm_server, clips, answers):
    with TranscriptionClient(llm_server.grpc_url) as client:
        pieces = list(client.ask_stream(QUESTION, clips["0880"], 16000, max_new_tokens=N))
    *deltas, final = pieces
    assert isinstance(final, Answer) and all(isinstance(d, AnswerDelta) for d in deltas)
    assert len(deltas) > 1  # it streamed: more than one piece before the end
    assert "".join(d.text for d in deltas if d.kind == "answer") == final.answer
    assert final.token_ids == answers["on"].token_ids and final.deltas == deltas
    assert 0 < final.first_delta_seconds <= final.latency_seconds


def test_async_client_concurrently(llm_server, clips, answers):
    async def run():
        async with AsyncTranscriptionClient(llm_server.grpc_url, concurrency=4) as client:
            return await asyncio.gather(client.ask(QUESTION, clips["0880"], 16000, max_new_tokens=N),
                                        *(client.ask(QUESTION, max_new_tokens=N) for _ in range(3)))  # fmt: skip

    first, *texts = asyncio.run(run())
    assert first.token_ids == answers["on"].token_ids  # batched with others, the same ids
    assert all(t.token_ids == answers["text"].token_ids for t in texts)


def test_a_long_recording_is_transcribed_by_the_long_form_path(llm_server, clips, tokenizer):
    names = sorted(name for name in clips if name.isdigit())
    pause = np.zeros(16000, np.float32)
    audio = np.concatenate([piece for name in names * 2 for piece in (pause, clips[name])] + [pause])
    audio += np.random.default_rng(3).standard_normal(audio.size).astype(np.float32) * np.float32(1e-3)
    assert audio.size > 40 * 16000
    with TranscriptionClient(llm_server.grpc_url) as client:
        segments = client.transcribe(audio, sample_rate=16000).segments
        answer = client.ask("Summarize.", audio, 16000, enable_thinking=False, max_new_tokens=4)
    assert len(segments) > 1
    transcript = " ".join(t for t in (transcript_text(tokenizer, s.token_ids) for s in segments) if t)
    assert answer.transcript == transcript
    assert answer.transcript_token_ids == [i for s in segments for i in s.token_ids]
    assert answer.prompt_tokens == len(llm_prompt_ids(tokenizer, "Summarize.", transcript, enable_thinking=False))


@pytest.mark.parametrize("question, options, message", [
    ("  \n", {}, "question is empty"),
    ("word " * 1100, {}, "max_question_tokens"),
    (QUESTION, {"max_new_tokens": LlmBudgets.max_new_tokens + 1}, "max_new_tokens"),
    (QUESTION, {"audio": np.zeros(16000, np.float32), "sample_rate": 16000}, "all zeros"),
    (QUESTION, {"audio": np.full(16000, np.nan, np.float32), "sample_rate": 16000}, "NaN"),
])  # fmt: skip
def test_bad_requests_are_refused_by_name(llm_server, answers, question, options, message):
    from tritonclient.utils import InferenceServerException

    with TranscriptionClient(llm_server.grpc_url) as client:
        with pytest.raises(InferenceServerException, match=message) as refused:
            client.ask(question, options.pop("audio", None), **options)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert client.ask(QUESTION, max_new_tokens=N).token_ids == answers["text"].token_ids  # it serves on


# --- the OpenAI front ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openai_client(llm_server):
    from openai import OpenAI

    from canary_trt.openai_api.process import ApiProcess

    with ApiProcess(llm_server.grpc_url) as api:
        yield OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)


def user_turn(text: str | None, audio: bytes | None = None, format: str = "wav") -> list[dict]:
    parts = [] if text is None else [{"type": "text", "text": text}]
    if audio is not None:
        parts.append({"type": "input_audio", "input_audio": {"data": base64.b64encode(audio).decode(), "format": format}})
    return [{"role": "user", "content": parts}]


def test_openai_chat_completion(openai_client, answers):
    reply = openai_client.chat.completions.create(model="canary-qwen-2.5b", messages=user_turn(QUESTION, CLIP.read_bytes()),
                                                  max_completion_tokens=N)  # fmt: skip
    (choice,) = reply.choices
    assert reply.object == "chat.completion" and choice.finish_reason == "length"
    assert choice.message.role == "assistant" and choice.message.content == answers["on"].answer
    assert choice.message.reasoning_content is None  # vLLM's field; None: the output had no <think> part
    assert reply.usage.completion_tokens == N and reply.usage.prompt_tokens == answers["on"].prompt_tokens
    text_only = openai_client.chat.completions.create(model="canary-qwen-2.5b", max_tokens=N,
                                                      messages=[{"role": "user", "content": QUESTION}])  # fmt: skip
    assert text_only.choices[0].message.content == answers["text"].answer
    assert "canary-qwen-2.5b" in [m.id for m in openai_client.models.list().data]


def test_openai_stream_without_thinking(openai_client, answers):
    flac = io.BytesIO()
    data, rate = sf.read(CLIP, dtype="float32")
    sf.write(flac, data, rate, format="FLAC", subtype="PCM_16")  # the clip is 16-bit: FLAC keeps its samples
    chunks = list(openai_client.chat.completions.create(
        model="canary-qwen-2.5b", messages=user_turn(QUESTION, flac.getvalue(), "flac"), max_completion_tokens=N,
        stream=True, stream_options={"include_usage": True}, extra_body={"chat_template_kwargs": {"enable_thinking": False}}))  # fmt: skip
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answers["off"].answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == N
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed in pieces


def test_openai_unreadable_audio_is_415(openai_client):
    import openai

    with pytest.raises(openai.APIStatusError, match="supported: wav, flac") as refused:
        openai_client.chat.completions.create(model="canary-qwen-2.5b", messages=user_turn(QUESTION, b"not audio"))
    assert refused.value.status_code == 415 and refused.value.body["code"] == "unsupported_audio"


@pytest.mark.parametrize("messages, options, message", [
    ([{"role": "system", "content": "Be brief."}, *user_turn(QUESTION)], {}, "exactly one user message"),
    (user_turn(QUESTION, b"RIFF", "wav") + [], {"n": 2}, "n must be 1"),
    ([{"role": "user", "content": user_turn(QUESTION, b"1")[0]["content"] * 2}], {}, "at most one recording"),
    (user_turn(None, CLIP.read_bytes()), {}, "no text"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], {}, "image_url"),
    (user_turn(QUESTION), {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool calling"),
    (user_turn(QUESTION), {"extra_body": {"chat_template_kwargs": {"enable_thinking": "no"}}}, "enable_thinking"),
    (user_turn("  "), {}, "no text"),
    (user_turn(QUESTION), {"max_completion_tokens": LlmBudgets.max_new_tokens + 1}, "max_new_tokens"),
])  # fmt: skip
def test_openai_errors_are_named(openai_client, messages, options, message):
    import openai

    with pytest.raises(openai.BadRequestError, match=message) as refused:
        openai_client.chat.completions.create(model="canary-qwen-2.5b", messages=messages, **options)
    assert refused.value.body["message"] and refused.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        openai_client.chat.completions.create(model="gpt-4o", messages=user_turn(QUESTION))


def test_cli_ask(llm_server, answers, capsys):
    import json

    from canary_trt.client.cli import main

    base = ["ask", "--url", llm_server.grpc_url, "--audio", str(CLIP), "--no-thinking", "--max-new-tokens", str(N)]
    assert main([*base, QUESTION]) == 0  # streamed: the answer on stdout, the finish line on stderr
    out, err = capsys.readouterr()
    assert out == answers["off"].answer + "\n" and f"[length; {N} tokens" in err
    assert main([*base, "--json", QUESTION]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["token_ids"], row["transcript"], row["reasoning"]) == (answers["off"].token_ids, answers["off"].transcript, None)
    assert main(["ask", "--url", llm_server.grpc_url, " "]) == 2
    assert "question is empty" in capsys.readouterr().err
