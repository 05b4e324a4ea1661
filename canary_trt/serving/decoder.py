"""`decoder` and `llm_decoder` (CPU flavour): the tensorrt_llm backend's tensor contract, served by batched
greedy decoding in ONNX Runtime with in-flight batching, as the tensorrt_llm backend batches on GPU: execute
only checks and queues each request (inflight.py); a thread decodes, requests join the running batch at the
next step and leave when they end, and each is answered through its own response sender. A request's tokens
do not depend on what decodes beside it (decoding.py DecodeBatch). Non-decoupled `decoder` sends exactly one
final response per request that way and execute returns None, which the python backend allows for
non-decoupled models too (tests/test_serving.py serves through it). The build's budgets bound every request
(prompt length, new tokens, their sum), as the TensorRT-LLM engine's max_input_len / max_seq_len do on GPU, so
one request cannot grow the KV cache without limit; a refusal names the budget.

The config's `mode` picks the decoder: asr (decoder.onnx, LoRA merged, export.json "budgets": one response per
request) or llm (llm_decoder.onnx, the base LLM, "llm_mode" budgets). llm_decoder is decoupled and answers each
request (one sequence) as the tensorrtllm backend does (model_repository/gpu/decoder/config.pbtxt has the
sources): `streaming` true sends a response per new token, output_ids [1, 1, 1] with sequence_length 1, the
final flag on the last token's response, or on an empty one (output_ids [1, 1, 0]) when the answer ends at
end_id; streaming false sends all the tokens in one final response."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import triton_python_backend_utils as pb_utils

from ..contract import Budgets, LlmBudgets
from ..decoding import GreedyDecoder, Request
from ..inflight import InflightBatcher
from .triton import BadRequest, build_manifest, internal_error, log_error, parameters, refusal, respond, tensor

# mode -> the manifest's decoder entry and its budgets
MODES = {"asr": ("decoder", Budgets.from_manifest), "llm": ("llm_decoder", LlmBudgets.from_manifest)}


class TritonPythonModel:
    name, decoupled = "decoder", False  # until initialize reads the config

    def initialize(self, args):
        build, manifest = build_manifest(args)
        config = json.loads(args["model_config"])
        self.name, self.decoupled = config["name"], pb_utils.using_decoupled_model_transaction_policy(config)
        entry, budgets = MODES[parameters(args).get("mode", "asr")]
        threads = int(parameters(args).get("threads", "0")) or None
        self.decoder = GreedyDecoder(build / manifest[entry], build / manifest["embeddings"], threads)
        self.budgets = budgets(manifest)
        # max_batch_size bounds both what one execute hands over and how many rows decode together
        self.batcher = InflightBatcher(self.decoder, config["max_batch_size"],
                                       on_sink_error=lambda e: log_error(f"{self.name}: sending a response: {e}"))  # fmt: skip

    def execute(self, requests) -> None:
        for request in requests:
            reply = _Reply(request.get_response_sender(), self.name, self.decoupled)
            try:
                reply.open(self.parse(request), tensor(request, "streaming", required=False))
                self.batcher.submit(reply.items, reply)  # blocks while the batcher's waiting room is full
            except BadRequest as e:
                reply.close(refusal(e))
            except Exception as e:  # a bug, or shutting down: this request only
                reply.fail(e)
        return None

    def finalize(self) -> None:
        self.batcher.close()

    def parse(self, request) -> list[Request]:
        ids, lengths = tensor(request, "input_ids"), tensor(request, "input_lengths")
        new_tokens, end_ids = tensor(request, "request_output_len"), tensor(request, "end_id", required=False)
        tables, rows = tensor(request, "prompt_embedding_table", required=False), tensor(request, "prompt_vocab_size", required=False)
        top_k = tensor(request, "runtime_top_k", required=False)
        if end_ids is None:
            raise BadRequest("end_id is required by the CPU decoder")
        if top_k is not None and (top_k != 1).any():
            raise BadRequest(f"runtime_top_k {int(top_k.max())}: the CPU decoder decodes greedily (top_k 1) only")
        _check_budgets(self.budgets, lengths.astype(np.int64), new_tokens.astype(np.int64))
        items = []
        for i in range(ids.shape[0]):
            row_ids = ids[i, : lengths[i]]
            table = None if tables is None else tables[i, : rows[i]]
            limit = 0 if table is None else len(table)
            if (row_ids >= self.decoder.vocab_size + limit).any() or (row_ids < 0).any():
                raise BadRequest(f"input_ids outside the vocabulary and the {limit}-row prompt table")
            items.append(Request(row_ids, table, int(new_tokens[i]), int(end_ids[i])))
        return items


def _check_budgets(budgets: Budgets | LlmBudgets, lengths: np.ndarray, new_tokens: np.ndarray) -> None:
    """Each bound named by its budget in export.json (LLM mode: the prompt and its answer share max_context_tokens;
    ASR mode: the sum is within max_seq_len whenever the other two are)."""
    if isinstance(budgets, LlmBudgets):
        context = f"max_context_tokens {budgets.max_context_tokens}"
        prompt, total = (budgets.max_input_len, f"{context} less one new token"), (budgets.max_context_tokens, context)
    else:
        prompt = budgets.max_input_len, f"max_input_len {budgets.max_input_len}"
        total = budgets.max_seq_len, f"max_seq_len {budgets.max_seq_len}"
    checks = (("input_lengths", lengths, prompt),
              ("request_output_len", new_tokens, (budgets.max_new_tokens, f"max_new_tokens {budgets.max_new_tokens}")),
              ("input_lengths + request_output_len", lengths + new_tokens, total))  # fmt: skip
    for what, values, (limit, name) in checks:
        if (values > limit).any():
            raise BadRequest(f"{what} {int(values.max())} is over this build's {name}")


@dataclass
class _Reply:
    """One request's responses (inflight.Sink): `decoder`, one final response with every row's tokens;
    decoupled `llm_decoder` (one row), the tensorrtllm backend's order (module doc)."""

    sender: object
    model: str
    decoupled: bool
    items: list[Request] = field(default_factory=list)
    streaming: bool = False
    results: dict[int, list[int]] = field(default_factory=dict)
    sent: int = 0
    closed: bool = False

    def open(self, items: list[Request], streaming: np.ndarray | None) -> None:
        if self.decoupled and len(items) != 1:
            raise BadRequest(f"{self.model} takes one sequence per request, not {len(items)}")
        self.items = items
        self.streaming = self.decoupled and streaming is not None and bool(streaming.any())

    def token(self, row: int, token: int) -> None:
        """A new token: streamed at once, final if it is the last one allowed."""
        if self.streaming:
            self.sent += 1
            self._send([token], final=self.sent == self.items[0].max_new_tokens)

    def done(self, row: int, ids: list[int]) -> None:
        self.results[row] = ids
        if len(self.results) < len(self.items) or self.closed:
            return
        if not self.decoupled:
            self.close(respond(_pack(self.items, [self.results[i] for i in range(len(self.items))])))
        else:  # streaming: it ended at end_id, which is never output (or it asked for no token)
            self._send([] if self.streaming else ids, final=True)

    def fail(self, error: BaseException) -> None:
        self.close(internal_error(self.model, error)[0])

    def close(self, response) -> None:
        if not self.closed:
            self.closed = True
            self.sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _send(self, ids: list[int], final: bool) -> None:
        outputs = {"output_ids": np.array(ids, np.int32).reshape(1, 1, -1),
                   "sequence_length": np.array([[len(ids)]], np.int32)}  # fmt: skip
        if final:
            self.close(respond(outputs))
        else:
            self.sender.send(respond(outputs))


def _pack(items: list[Request], generated: list[list[int]]) -> dict[str, np.ndarray]:
    """The tensorrt_llm backend's outputs: output_ids [batch, beam, tokens] (padded with end_id) and
    sequence_length [batch, beam]."""
    output = np.full((len(generated), 1, max(1, max(map(len, generated)))), items[0].end_id, dtype=np.int32)
    for i, ids in enumerate(generated):
        output[i, 0, : len(ids)] = ids
    return {"output_ids": output, "sequence_length": np.array([[len(ids)] for ids in generated], dtype=np.int32)}
