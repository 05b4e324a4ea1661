"""`canary_qwen_chat`: the model card's LLM mode, served by BLS in both flavours (built with `--llm-mode`).

A request is a QUESTION, with or without audio. With audio, ASR mode runs first through `canary_qwen_long`
(any length up to its maximum; a clip the ensemble takes whole is one segment), and the transcript is the
segments' text as NeMo's tokenizer decodes their ids (`llm_mode.transcript_text`), joined with single spaces.
Then the base LLM (`llm_decoder`, LoRA off) answers NeMo's qwen-format prompt for the model card's message
(`llm_mode.llm_prompt_ids`: "{question}\\n\\n{transcript}"; the question alone without audio), with Qwen3's
empty think block after the assistant prefix when ENABLE_THINKING is false. Greedy, as SALM.generate.

Decoupled: every request ends with exactly one final response: the whole result (ANSWER, ANSWER_TOKEN_IDS,
FINISH_REASON, PROMPT_TOKENS; REASONING when the output had a <think> part; TRANSCRIPT and its
TRANSCRIPT_TOKEN_IDS when there was audio), or the request's error.
With STREAM true, responses with DELTA_TEXT and DELTA_KIND ("reasoning" or "answer") come first, as the
base LLM's tokens arrive; their texts joined per kind are exactly the final REASONING and ANSWER.

Bounded before any work: the question's bytes and tokens, MAX_NEW_TOKENS, and the prompt + new tokens within
the build's context (contract.LlmBudgets), each refused by name (INVALID_ARGUMENT). Without MAX_NEW_TOKENS
the budget is the build's max_new_tokens, cut to what the context leaves; FINISH_REASON is "length" when the
answer used it all. The audio is checked here by audio_check's rules with canary_qwen_long's maximum, before
the question's ASR: Triton 2.51's python backend hands BLS errors back without their code (long_form.py).
"""

from __future__ import annotations

import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils

from ..contract import (CHAT_MODEL, FINISH_LENGTH, FINISH_STOP, INPUT_ENABLE_THINKING, INPUT_MAX_NEW_TOKENS,
                        INPUT_QUESTION, INPUT_STREAM, INPUT_WAV, INPUT_WAV_LENS, LLM_DECODER, LONG_FORM_MODEL,
                        OUTPUT_ANSWER, OUTPUT_ANSWER_TOKEN_IDS, OUTPUT_DELTA_KIND, OUTPUT_DELTA_TEXT,
                        OUTPUT_FINISH_REASON, OUTPUT_PROMPT_TOKENS, OUTPUT_REASONING, OUTPUT_SEGMENT_TOKEN_COUNTS,
                        OUTPUT_SEGMENT_TOKEN_IDS, OUTPUT_TRANSCRIPT, OUTPUT_TRANSCRIPT_TOKEN_IDS, STREAM_REFUSAL, TOKENIZER_DIR,
                        LlmBudgets)
from ..llm_mode import StreamingText, check_question, llm_prompt_ids, new_token_budget, split_reasoning, transcript_text
from ..errors import InvalidInput
from ..tokenizer import eos_id, load_tokenizer, pad_id
from .adapter import GREEDY_TOP_K
from .audio_check import check_clips
from .triton import BadRequest, build_manifest, internal_error, log_error, parameters, refusal, respond, tensor

MODEL = CHAT_MODEL
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class StepFailed(RuntimeError):
    """A model this one calls failed (not the request's fault)."""


class TritonPythonModel:
    def initialize(self, args):
        build, manifest = build_manifest(args)
        self.budgets = LlmBudgets.from_manifest(manifest)
        if self.budgets is None:
            raise ValueError(f"{MODEL}: {build} was exported without --llm-mode (no llm_decoder)")
        self.tokenizer = load_tokenizer(build / manifest.get("tokenizer", TOKENIZER_DIR))
        self.eos_id, self.pad_id = eos_id(self.tokenizer), pad_id(self.tokenizer)
        self.max_seconds = float(parameters(args)["max_long_audio_seconds"])
        self.tasks: set[asyncio.Task] = set()  # held until done: the event loop keeps only weak references

    async def execute(self, requests):
        # decoupled: each request is answered through its own sender, concurrently, by its own task
        for request in requests:
            task = asyncio.ensure_future(self.answer(request))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return None

    def finalize(self):
        for task in self.tasks:
            task.cancel()

    async def answer(self, request) -> None:
        sender = request.get_response_sender()
        try:
            sender.send(respond(await self.handle(request, sender)), flags=FINAL)
        except (BadRequest, InvalidInput) as e:  # the code for Triton, the marker for the stream (contract.py)
            sender.send(refusal(BadRequest(f"{STREAM_REFUSAL}{e}")), flags=FINAL)
        except Exception as e:  # a step failed, or a bug: this request's explicit error, the server serves on
            sender.send(internal_error(MODEL, e)[0], flags=FINAL)

    async def handle(self, request, sender) -> dict[str, np.ndarray]:
        question = _text(tensor(request, INPUT_QUESTION)[0, 0], INPUT_QUESTION)
        check_question(self.tokenizer, question, self.budgets)  # before any ASR work
        thinking, stream = _flag(request, INPUT_ENABLE_THINKING, True), _flag(request, INPUT_STREAM, False)
        requested = tensor(request, INPUT_MAX_NEW_TOKENS, required=False)
        requested = None if requested is None else int(requested[0, 0])
        new_token_budget(0, requested, self.budgets)  # MAX_NEW_TOKENS on its own, before the ASR work
        wav = tensor(request, INPUT_WAV, required=False)
        transcript, transcript_ids = (None, []) if wav is None else await self.transcribe(wav, tensor(request, INPUT_WAV_LENS))
        prompt = llm_prompt_ids(self.tokenizer, question, transcript, enable_thinking=thinking)
        budget = new_token_budget(len(prompt), requested, self.budgets)
        text = StreamingText(self.tokenizer)
        generated: list[int] = []
        async for ids in self.generate(prompt, budget):
            generated += ids
            for kind, delta in text.feed(ids):
                if stream and delta:
                    sender.send(respond({OUTPUT_DELTA_TEXT: _string(delta), OUTPUT_DELTA_KIND: _string(kind)}))
        if stream:
            for kind, delta in text.finish():
                if delta:
                    sender.send(respond({OUTPUT_DELTA_TEXT: _string(delta), OUTPUT_DELTA_KIND: _string(kind)}))
        reasoning, answer = split_reasoning(self.tokenizer, generated)
        finished = FINISH_LENGTH if len(generated) >= budget else FINISH_STOP
        result = {
            OUTPUT_ANSWER: _string(answer), OUTPUT_ANSWER_TOKEN_IDS: np.array([generated], dtype=np.int32).reshape(1, -1),
            OUTPUT_FINISH_REASON: _string(finished), OUTPUT_PROMPT_TOKENS: np.array([[len(prompt)]], dtype=np.int32),
        }  # fmt: skip
        if reasoning is not None:  # absent, not empty, when the output had no <think> part
            result[OUTPUT_REASONING] = _string(reasoning)
        if transcript is not None:  # absent for a text-only question
            result[OUTPUT_TRANSCRIPT] = _string(transcript)
            result[OUTPUT_TRANSCRIPT_TOKEN_IDS] = np.array([transcript_ids], dtype=np.int32).reshape(1, -1)
        return result

    async def transcribe(self, wav: np.ndarray, lengths: np.ndarray | None) -> tuple[str, list[int]]:
        """ASR mode through canary_qwen_long: (the transcript as NeMo decodes each segment, all their ids)."""
        if lengths is None:
            raise BadRequest(f"{INPUT_WAV} needs {INPUT_WAV_LENS}")
        check_clips(wav, lengths, self.max_seconds)
        inputs = [pb_utils.Tensor(INPUT_WAV, wav), pb_utils.Tensor(INPUT_WAV_LENS, lengths)]
        response = await pb_utils.InferenceRequest(
            model_name=LONG_FORM_MODEL, inputs=inputs,
            requested_output_names=[OUTPUT_SEGMENT_TOKEN_IDS, OUTPUT_SEGMENT_TOKEN_COUNTS]).async_exec()  # fmt: skip
        _raise_for(response, LONG_FORM_MODEL)
        ids = pb_utils.get_output_tensor_by_name(response, OUTPUT_SEGMENT_TOKEN_IDS).as_numpy()[0]
        counts = pb_utils.get_output_tensor_by_name(response, OUTPUT_SEGMENT_TOKEN_COUNTS).as_numpy()[0]
        segments = np.split(ids, np.cumsum(counts)[:-1]) if counts.size else []
        texts = [transcript_text(self.tokenizer, segment.tolist()) for segment in segments]
        return " ".join(t for t in texts if t), ids.tolist()

    async def generate(self, prompt: list[int], budget: int):
        """The base LLM's new ids as they arrive (llm_decoder streams them)."""
        column = lambda value, dtype=np.int32: np.array([[value]], dtype=dtype)  # noqa: E731
        inputs = [pb_utils.Tensor("input_ids", np.array([prompt], dtype=np.int32)),
                  pb_utils.Tensor("input_lengths", column(len(prompt))),
                  pb_utils.Tensor("request_output_len", column(budget)), pb_utils.Tensor("end_id", column(self.eos_id)),
                  pb_utils.Tensor("pad_id", column(self.pad_id)), pb_utils.Tensor("runtime_top_k", column(GREEDY_TOP_K)),
                  pb_utils.Tensor("streaming", column(True, bool))]  # fmt: skip
        request = pb_utils.InferenceRequest(model_name=LLM_DECODER, inputs=inputs,
                                            requested_output_names=["output_ids", "sequence_length"])  # fmt: skip
        # The stub's response iterator is a blocking one, even from async_exec: each next() waits in a worker
        # thread, so that this instance's event loop keeps serving the other requests meanwhile.
        responses = await request.async_exec(decoupled=True)
        while (response := await asyncio.to_thread(next, responses, None)) is not None:
            _raise_for(response, LLM_DECODER)
            ids = new_ids(response)
            if ids:
                yield ids


def new_ids(response) -> list[int]:
    """The tokens one streamed llm_decoder response carries (none in a closing empty response)."""
    output = pb_utils.get_output_tensor_by_name(response, "output_ids")
    if output is None:
        return []
    lengths = pb_utils.get_output_tensor_by_name(response, "sequence_length").as_numpy()
    return output.as_numpy()[0, 0, : int(lengths[0, 0])].tolist()


def _raise_for(response, model: str) -> None:
    if response.has_error():
        error = response.error()
        if error.code() == pb_utils.TritonError.INVALID_ARG:
            raise BadRequest(f"{model}: {error.message()}")
        log_error(f"{MODEL}: {model} failed: {error.message()}")
        raise StepFailed(f"{model}: {error.message()}")


def _string(text: str) -> np.ndarray:
    return np.array([[text.encode("utf-8")]], dtype=object)


def _text(value, name: str) -> str:
    raw = value if isinstance(value, bytes) else str(value).encode()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{name} is not valid UTF-8") from None


def _flag(request, name: str, default: bool) -> bool:
    value = tensor(request, name, required=False)
    return default if value is None else bool(value.reshape(-1)[0])
