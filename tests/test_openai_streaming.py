"""Live: `stream=true` on the OpenAI front's /v1/audio/transcriptions, called with the official `openai`
package's streaming interface (sync and async) and with raw HTTP, before the real tritonserver on CPU.

The events are OpenAI's (TranscriptionTextDeltaEvent, then one TranscriptionTextDoneEvent); the joined deltas
are the done text, which is the non-streamed text: a clip up to 40 s as one delta, a ~60-s upload as one
delta per non-empty final segment of canary_qwen_stream (canary_qwen_long's segments). Refusals stay HTTP
errors; the admission limit and the API key hold for streamed requests too."""

import asyncio
import json

import httpx
import openai
import pytest
from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent

from canary_trt.client import TranscriptionClient

from test_openai_api import CLIPS, SERVED, Front, assert_openai_error, long_flac  # noqa: F401 (long_flac: a fixture)


@pytest.fixture(scope="module")
def front(server):
    running = Front(server.grpc_url)
    yield running
    running.stop()


def _events(stream) -> tuple[list[str], str]:
    """(the deltas, the done text) of a stream of events, checking their types and order."""
    *deltas, done = list(stream)
    assert all(isinstance(e, TranscriptionTextDeltaEvent) and e.type == "transcript.text.delta" for e in deltas)
    assert isinstance(done, TranscriptionTextDoneEvent) and done.type == "transcript.text.done"
    return [e.delta for e in deltas], done.text


def test_a_short_clip_streams_as_one_delta_of_the_non_streamed_text(front):
    client = front.openai()
    for response_format in ("json", "text"):
        with open(CLIPS[1], "rb") as f:
            whole = client.audio.transcriptions.create(model=SERVED, file=f).text
        with open(CLIPS[1], "rb") as f:
            deltas, text = _events(client.audio.transcriptions.create(model=SERVED, file=f, stream=True,
                                                                      response_format=response_format))  # fmt: skip
        assert deltas == [whole] and text == whole


def test_a_long_upload_streams_a_delta_per_segment(server, front, long_flac):
    with TranscriptionClient(server.grpc_url) as client:
        want = client.transcribe(str(long_flac))  # canary_qwen_long
    texts = [s.text for s in want.segments if s.text]
    assert len(texts) > 1
    with open(long_flac, "rb") as f:
        deltas, text = _events(front.openai().audio.transcriptions.create(model=SERVED, file=f, stream=True))
    assert deltas == [texts[0], *(f" {t}" for t in texts[1:])]
    assert "".join(deltas) == text == want.text  # want.text: the front's non-streamed text too (test_openai_api)

    async def run():
        client = openai.AsyncOpenAI(base_url=f"{front.url}/v1", api_key="unused", max_retries=0)
        with open(long_flac, "rb") as f:
            stream = await client.audio.transcriptions.create(model=SERVED, file=f, stream=True)
            return [event async for event in stream]

    events = asyncio.run(run())
    assert [e.delta for e in events[:-1]] == deltas and events[-1].text == text

    # raw HTTP: data-only server-sent events, each one JSON object
    with open(long_flac, "rb") as f:
        answer = front.post(files={"file": (long_flac.name, f.read())}, data={"model": SERVED, "stream": "true"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    bodies = [json.loads(line.removeprefix("data: ")) for line in answer.text.split("\n\n") if line]
    assert bodies[-1] == {"type": "transcript.text.done", "text": text}
    assert bodies[:-1] == [{"type": "transcript.text.delta", "delta": d} for d in deltas]


def test_stream_refusals_are_http_errors(front):
    client = front.openai()
    for response_format in ("srt", "vtt", "verbose_json"):
        with pytest.raises(openai.BadRequestError) as info, open(CLIPS[0], "rb") as f:
            client.audio.transcriptions.create(model=SERVED, file=f, stream=True, response_format=response_format)
        assert f"response_format {response_format!r} is not supported with stream=true" in info.value.body["message"]
        assert info.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as info, open(CLIPS[0], "rb") as f:
        client.audio.transcriptions.create(model=SERVED, file=f, stream=True, language="de")
    assert "English only" in info.value.body["message"]
    assert_openai_error(front.post(files={"file": ("a.wav", CLIPS[0].read_bytes())},
                                   data={"model": SERVED, "stream": "maybe"}), 400, "stream must be true or false",
                        param="stream")  # fmt: skip


def test_a_stream_holds_its_admission_slot_until_it_ends_and_needs_the_key(server, long_flac):
    front = Front(server.grpc_url, "--max-in-flight", "1", "--max-queue", "0", "--api-key-env", "FRONT_KEY",
                  env={"FRONT_KEY": "s3cret"})
    try:
        audio = {"file": (long_flac.name, long_flac.read_bytes())}
        headers = {"Authorization": "Bearer s3cret"}
        assert_openai_error(front.post(files=audio, data={"model": SERVED, "stream": "true"}), 401, "API key")
        url = f"{front.url}/v1/audio/transcriptions"
        with httpx.stream("POST", url, files=audio, data={"model": SERVED, "stream": "true"}, headers=headers,
                          timeout=120) as first:  # fmt: skip
            lines = first.iter_lines()
            assert json.loads(next(lines).removeprefix("data: "))["type"] == "transcript.text.delta"
            assert_openai_error(front.post(files=audio, data={"model": SERVED}, headers=headers), 429, "too many")
            rest = [json.loads(line.removeprefix("data: ")) for line in lines if line]
        assert rest[-1]["type"] == "transcript.text.done"
        with open(CLIPS[0], "rb") as f:  # the slot is free again
            assert front.openai("s3cret").audio.transcriptions.create(model=SERVED, file=f).text
    finally:
        front.stop()
