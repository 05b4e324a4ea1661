"""`decoder` and `llm_decoder` (CPU flavour): the tensorrt_llm backend's tensor contract, served by batched
greedy decoding in ONNX Runtime. All requests handed over at once decode together with a KV cache; each
request's tokens do not depend on the others (decoding.py). The build's budgets bound every request
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
from dataclasses import dataclass

import numpy as np
import triton_python_backend_utils as pb_utils

from ..contract import Budgets, LlmBudgets
from ..decoding import GreedyDecoder, Request
from .triton import BadRequest, batched, build_manifest, guarded, internal_error, parameters, refusal, respond, tensor

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

    def execute(self, requests):
        if self.decoupled:
            return self._stream(requests)
        run = lambda batch: batched(self.name, batch, self.parse, self.decoder.generate, _pack)  # noqa: E731
        return guarded(self.name, requests, run)

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

    def _stream(self, requests) -> None:
        """Decoupled: every request's responses go through its own sender; execute returns None."""
        streams = []
        for request in requests:
            stream = _Stream(request.get_response_sender())
            try:
                stream.open(self.parse(request), tensor(request, "streaming", required=False))
                streams.append(stream)
            except BadRequest as e:
                stream.close(refusal(e))
            except Exception as e:  # a bug, not the client's fault: this request only
                stream.close(internal_error(self.name, e)[0])
        if not streams:
            return None
        try:
            stream_tokens = lambda step: [streams[i].token(token) for i, token in step.items()]  # noqa: E731
            results = self.decoder.generate([s.request for s in streams], on_tokens=stream_tokens)
        except Exception as e:  # ONNX Runtime failed: every request of this run that is still open gets the error
            for stream, response in zip(streams, internal_error(self.name, e, len(streams))):
                stream.close(response)
            return None
        for stream, ids in zip(streams, results):
            stream.finish(ids)
        return None


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
class _Stream:
    """One decoupled request's responses, in the tensorrtllm backend's order (module doc)."""

    sender: object
    request: Request | None = None
    streaming: bool = False
    sent: int = 0
    closed: bool = False

    def open(self, items: list[Request], streaming: np.ndarray | None) -> None:
        if len(items) != 1:
            raise BadRequest(f"llm_decoder takes one sequence per request, not {len(items)}")
        self.request, self.streaming = items[0], streaming is not None and bool(streaming.any())

    def token(self, token: int) -> None:
        """A new token (GreedyDecoder's on_tokens): streamed at once, final if it is the last one allowed."""
        if self.streaming:
            self.sent += 1
            self._send([token], final=self.sent == self.request.max_new_tokens)

    def finish(self, ids: list[int]) -> None:
        if not self.closed:  # streaming: ended at end_id, which is never output (or asked for no token)
            self._send([] if self.streaming else ids, final=True)

    def close(self, response) -> None:
        if not self.closed:
            self.sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            self.closed = True

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
