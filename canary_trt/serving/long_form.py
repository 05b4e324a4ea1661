"""`canary_qwen_long`: a recording of any length up to `max_long_audio_seconds`, transcribed through the
`canary_qwen` ensemble by BLS (its steps are the ensemble's; none is repeated here), in both flavours.

- Audio the ensemble takes whole (the build's max_audio_seconds, 40 s) is sent to it as it is, without VAD:
  one segment [0, length], the same tokens as a direct request.
- Longer audio is cut by the long-form segmenter (Silero VAD, `canary_trt.longform`) with the options in this
  model's config, the chunk length chosen at export to fit the build's new-token budget
  (`longform/served_options.py`). Each chunk is one ensemble request with MAX_NEW_TOKENS = its budget, a chunk
  under the ensemble's 0.1-s minimum zero-padded to it (chunks.py, shared with the live streaming.py). The VAD
  reads the recording in blocks through the streaming segmenter (the same chunks as `segment`, by its
  construction), and each chunk is sent as soon as it is decided, so decoding overlaps the VAD (~120x real time
  on one core: a minute for two hours) and no copy of the whole recording is made. The chunks are in flight
  together (at most `max_chunks_in_flight`, the decoder's batch, which keeps them inside every queue behind the
  ensemble), so the ensemble's batchers batch them. One chunk's failure fails the request, naming the chunk;
  no further chunk is sent.
- Refusals stay INVALID_ARGUMENT. Triton 2.51's python backend (the CPU flavour's) hands BLS errors back
  without their code (always INTERNAL; newer backends keep it, and it is used where present), so what the
  client controls is checked here, up front, by the steps' own code: the audio by audio_check's rules
  (`check_clips`, with the long maximum), PROMPT by the adapter's. The chunks' audio and MAX_NEW_TOKENS are
  then valid by construction, and a chunk that still fails is the server's failure (INTERNAL).
- A recording in which the VAD finds no speech has no segments: an empty TRANSCRIPT, not an error. Digital
  silence (all zeros), like every other bad audio, is refused by audio_check's rules (`check_clips`).

A segment whose token count equals its MAX_NEW_TOKENS did not reach the end-of-turn token within the budget:
SEGMENT_TRUNCATED flags it (the text is cut there, never silently).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import numpy as np

from ..contract import (INPUT_PROMPT, INPUT_WAV, INPUT_WAV_LENS, LONG_FORM_MODEL, OUTPUT_SEGMENT_END_MS,
                        OUTPUT_SEGMENT_START_MS, OUTPUT_SEGMENT_TEXT, OUTPUT_SEGMENT_TOKEN_COUNTS, OUTPUT_SEGMENT_TOKEN_IDS,
                        OUTPUT_SEGMENT_TRUNCATED, OUTPUT_TRANSCRIPT, SAMPLE_RATE, Budgets)
from ..longform import Chunk, SileroVad, StreamingSegmenter
from ..longform.served_options import from_parameters
from ..longform.vad import open_session
from .adapter import TritonPythonModel as Adapter
from .adapter import instruction_text
from .audio_check import check_clips
from .chunks import transcribe_chunk
from .triton import build_manifest, guarded_async, parameters, per_request_async, tensor

MODEL = LONG_FORM_MODEL
SAMPLES_PER_MS = SAMPLE_RATE // 1000
VAD_BLOCK = 10 * SAMPLE_RATE  # ~0.1 s of VAD work between the event loop's turns (sending, answers)


@dataclass
class _Recording:
    clip: np.ndarray
    prompt: np.ndarray | None
    limit: asyncio.Semaphore  # chunk requests in flight
    failed: bool = False  # a chunk failed: send no more


class TritonPythonModel:
    def initialize(self, args):
        config = parameters(args)
        self.budgets = Budgets.from_manifest(build_manifest(args)[1])
        self.max_seconds = float(config["max_long_audio_seconds"])
        self.in_flight = int(config["max_chunks_in_flight"])
        self.options = options = from_parameters(config)
        # a chunk request over the build's budgets would be refused: such a config is refused at load instead
        if options.max_new_tokens > self.budgets.max_new_tokens or options.max_chunk_s > self.budgets.max_audio_seconds:
            raise ValueError(f"{MODEL}: max_new_tokens {options.max_new_tokens} / max_chunk_s {options.max_chunk_s:g} are "
                             f"over this build's {self.budgets.max_new_tokens} / {self.budgets.max_audio_seconds:g} s")  # fmt: skip
        self.vad_session = open_session()  # shared by the requests; each has its own VAD state
        self.adapter = Adapter()  # for its PROMPT check only (the module doc says why)
        self.adapter.initialize(args)

    async def execute(self, requests):
        return await guarded_async(MODEL, requests, lambda batch: per_request_async(batch, self.handle, MODEL))

    async def handle(self, request) -> dict[str, np.ndarray]:
        # the long maximum is checked on the tensor's shape, before any sample is read or any VAD work
        clip = check_clips(tensor(request, INPUT_WAV), tensor(request, INPUT_WAV_LENS), self.max_seconds)[0]
        prompt = tensor(request, INPUT_PROMPT, required=False)
        if prompt is not None:
            self.adapter.prompt_ids(instruction_text(prompt[0, 0]))
        recording = _Recording(clip, prompt, asyncio.Semaphore(self.in_flight))
        chunks, sent = [], []
        try:
            async with contextlib.aclosing(self.chunks(clip)) as decided:
                async for chunk in decided:
                    if recording.failed:
                        break
                    chunks.append(chunk)
                    sent.append(asyncio.ensure_future(self.transcribe(recording, chunk)))
        finally:  # every chunk sent is awaited, whatever happened: none outlives the request
            outcomes = await asyncio.gather(*sent, return_exceptions=True)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:  # the first in the recording's order
            raise failures[0]
        return outputs(chunks, outcomes)

    async def chunks(self, clip: np.ndarray):
        """The whole clip as one chunk when the ensemble takes it, else the segmenter's chunks as decided."""
        if clip.size <= self.budgets.max_samples:
            yield Chunk(0, -(-clip.size // SAMPLES_PER_MS), self.budgets.max_new_tokens)  # covers every sample
            return
        stream = StreamingSegmenter(self.options, SileroVad(self.vad_session))
        for start in range(0, clip.size, VAD_BLOCK):
            for chunk in stream.feed(clip[start : start + VAD_BLOCK]):
                yield chunk
            await asyncio.sleep(0)  # the chunks decided so far go out while the VAD reads on
        for chunk in stream.finish():
            yield chunk

    async def transcribe(self, recording: _Recording, chunk: Chunk) -> tuple[bytes, np.ndarray] | None:
        async with recording.limit:  # the chunk's samples are copied only once it is sent
            if recording.failed:
                return None  # the request fails anyway
            try:
                return await transcribe_chunk(chunk.slice(recording.clip), chunk.max_new_tokens, recording.prompt,
                                              f"chunk {chunk.start_ms}-{chunk.end_ms} ms")  # fmt: skip
            except Exception:
                recording.failed = True
                raise


def outputs(chunks: list[Chunk], results: list[tuple[bytes, np.ndarray]]) -> dict[str, np.ndarray]:
    texts, ids = [text for text, _ in results], [tokens for _, tokens in results]
    counts = [len(tokens) for tokens in ids]

    def row(values, dtype):  # [1, segments]: the request's batch of one
        return np.array(values, dtype=dtype).reshape(1, -1)

    return {
        OUTPUT_TRANSCRIPT: row([b" ".join(text for text in texts if text)], object),
        OUTPUT_SEGMENT_START_MS: row([c.start_ms for c in chunks], np.int32),
        OUTPUT_SEGMENT_END_MS: row([c.end_ms for c in chunks], np.int32),
        OUTPUT_SEGMENT_TEXT: row(texts, object),
        OUTPUT_SEGMENT_TOKEN_IDS: row(np.concatenate([np.zeros(0, np.int32), *ids]), np.int32),
        OUTPUT_SEGMENT_TOKEN_COUNTS: row(counts, np.int32),
        OUTPUT_SEGMENT_TRUNCATED: row([n >= c.max_new_tokens for n, c in zip(counts, chunks)], bool),
    }  # fmt: skip
