"""`canary-trt export --llm-mode`: the base LLM (LoRA off) as a second decoder, llm_decoder, in both flavours.

CPU: llm_decoder.onnx is transformers' Qwen3 with the checkpoint's base weights (not the merged decoder), its
greedy ids are Hugging Face generate's, and served (decoupled) it streams exactly as the tensorrtllm backend
does (tests/test_trtllm_backend_contract.py backend_responses). GPU, without TensorRT: the dry run's base-LLM
steps and their trtllm-build flags. Both: the filled configs parse; llm_decoder only where --llm-mode was given."""

import queue
import shutil

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from canary_trt.cli import main
from canary_trt.contract import (DECODER_ONNX, EMBEDDINGS, LLM_DECODER, LLM_DECODER_INT4_ONNX, LLM_DECODER_INT8_ONNX,
                                 LLM_DECODER_ONNX, LlmBudgets)
from canary_trt.export.build import export
from canary_trt.export.presets import PRESETS, get_preset
from canary_trt.export_info import read_export_info
from canary_trt.tokenizer import eos_id, load_tokenizer
from test_gpu_export import _flags
from test_trtllm_backend_contract import backend_responses

slow = pytest.mark.slow  # exports through PyTorch, or starts the bundled tritonserver
QUIET = lambda line: None  # noqa: E731
MAX_NEW = 16
QUESTIONS = ["What is said here?", "Summarize the following recording in one short sentence, please:"]
PROMPT_TABLE_INPUTS = {"prompt_embedding_table", "prompt_vocab_size"}


def _prompt(tokenizer, question: str) -> list[int]:
    """A text-only LLM-mode prompt in NeMo's qwen format (its exact form is serving/chat.py's concern)."""
    return tokenizer.encode(f"<|im_start|>user\n{question}\n\nhello world<|im_end|>\n<|im_start|>assistant\n")


def _load(repository, model: str) -> mc.ModelConfig:
    text = (repository / model / "config.pbtxt").read_text(encoding="utf-8")
    assert "${" not in text, f"unfilled placeholder in {model}"
    config = text_format.Parse(text, mc.ModelConfig())
    assert config.name == model and (repository / model / "1").is_dir()
    return config


# --- fast: dry runs -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dry_builds(tiny_checkpoint, tmp_path_factory):
    """Dry runs (configs and manifest only) with and without --llm-mode, per flavour."""
    builds = {}
    for target in ("cpu", "gpu"):
        for llm_mode in (False, True):
            out = tmp_path_factory.mktemp(f"{target}-{llm_mode}")
            export(tiny_checkpoint.path, out, target=target, dry_run=True, llm_mode=llm_mode, log=QUIET)
            builds[target, llm_mode] = out
    return builds


def test_gpu_dry_run_lists_the_base_llm_steps(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "build"
    assert main(["export", "--checkpoint", str(tiny_checkpoint.path), "--out", str(out), "--target", "gpu",
                 "--llm-mode", "--dry-run"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    for title in ("base HF Qwen3 checkpoint (LoRA off", "base-LLM TensorRT-LLM checkpoint", "base-LLM TensorRT-LLM engine"):
        assert title in printed
    commands = [line.split("$ ", 1)[1].split() for line in printed.splitlines() if "$ " in line]
    converts = [c for c in commands if "canary_trt.export.trtllm" in c]
    assert [_flags(c[2:])["hf-dir"] for c in converts] == [str(out / "hf_llm"), str(out / "hf_llm_base")]
    asr, base = [_flags(c) for c in commands if c[0] == "trtllm-build"]
    preset, budgets = get_preset("h100"), LlmBudgets()
    assert base["checkpoint_dir"] == str(out / "trtllm_llm_checkpoint") and base["output_dir"] == str(out / "trtllm_llm_engine")
    assert (base["max_input_len"], base["max_seq_len"]) == (str(budgets.max_context_tokens - 1), str(budgets.max_context_tokens))
    assert base["max_prompt_embedding_table_size"] == "0"  # text only: no prompt-tuning input in the engine
    assert base["max_batch_size"] == asr["max_batch_size"] == str(preset.llm_max_batch)  # the same in-flight batch
    different = {"checkpoint_dir", "output_dir", "max_input_len", "max_seq_len", "max_prompt_embedding_table_size"}
    assert {k: v for k, v in base.items() if k not in different} == {k: v for k, v in asr.items() if k not in different}
    manifest = read_export_info(out)
    assert manifest["llm_mode"] == budgets.to_manifest() and manifest["llm_decoder_engine"] == "trtllm_llm_engine"


def test_every_preset_fits_a_full_llm_prompt_in_one_step():
    assert LlmBudgets().max_input_len == 8191
    assert all(p.max_num_tokens >= LlmBudgets().max_input_len for p in PRESETS.values())


@pytest.mark.parametrize("precision, served", [("int8", LLM_DECODER_INT8_ONNX), ("int4", LLM_DECODER_INT4_ONNX)])
def test_cpu_dry_run_plans_the_base_llm_exports(precision, served, tiny_checkpoint, tmp_path, dry_builds):
    assert read_export_info(dry_builds["cpu", True])["llm_decoder"] == LLM_DECODER_ONNX
    assert read_export_info(dry_builds["cpu", True])["llm_mode"] == LlmBudgets().to_manifest()
    steps = export(tiny_checkpoint.path, tmp_path, target="cpu", precision=precision, dry_run=True, llm_mode=True, log=QUIET)
    titles = [s.title for s in steps]
    assert any(t.startswith("LLM-mode decoder ONNX (base Qwen3, LoRA off") for t in titles)
    assert any(t.startswith(f"llm_decoder {precision} weights") for t in titles)
    assert any(t.startswith(f"decoder {precision} weights") for t in titles)
    assert read_export_info(tmp_path)["llm_decoder"] == served


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_llm_mode_models_only_in_llm_mode_builds(dry_builds, target):
    plain, llm = (sorted(p.name for p in (dry_builds[target, m] / "model_repository").iterdir()) for m in (False, True))
    assert LLM_DECODER not in plain and "canary_qwen_chat" not in plain
    assert "llm_mode" not in read_export_info(dry_builds[target, False])
    assert LLM_DECODER in llm and set(llm) - set(plain) <= {LLM_DECODER, "canary_qwen_chat"}


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_llm_decoder_config_is_the_decoder_template_decoupled(dry_builds, target):
    repository = dry_builds[target, True] / "model_repository"
    decoder, llm = _load(repository, "decoder"), _load(repository, LLM_DECODER)
    assert not decoder.model_transaction_policy.decoupled and llm.model_transaction_policy.decoupled
    assert llm.backend == decoder.backend and llm.max_batch_size == decoder.max_batch_size
    inputs = {i.name: i for i in llm.input}
    assert not PROMPT_TABLE_INPUTS & set(inputs)  # text only: Triton refuses a prompt table by name
    assert {i.name: i for i in decoder.input}.keys() - inputs.keys() == PROMPT_TABLE_INPUTS
    assert set(inputs) - {i.name for i in decoder.input} == {"streaming"}
    streaming = inputs["streaming"]
    assert streaming.data_type == mc.TYPE_BOOL and streaming.optional and list(streaming.reshape.shape) == []
    assert list(llm.output) == list(decoder.output)
    params = {k: v.string_value for k, v in llm.parameters.items()}
    if target == "cpu":
        assert params["mode"] == "llm" and decoder.parameters["mode"].string_value == "asr"
    else:
        assert params["gpt_model_path"].endswith("trtllm_llm_engine")
        assert decoder.parameters["gpt_model_path"].string_value.endswith("trtllm_engine")


# --- slow: the exported graph, then the served model ----------------------------------------------------------


@pytest.fixture(scope="module")
def base_llm(tiny_checkpoint):
    """transformers' Qwen3 with the stored base weights, read here directly: base_layer kept, lora_* dropped."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from canary_trt.checkpoint import EMBEDDING, LLM_KEYS, LLM_PREFIX

    weights = tiny_checkpoint.read_weights(LLM_KEYS)
    state = {key[len(LLM_PREFIX) :].replace(".base_layer.", "."): value.float() for key, value in weights.items()
             if key.startswith(LLM_PREFIX) and ".lora_" not in key}  # fmt: skip
    state["model.embed_tokens.weight"] = state["lm_head.weight"] = weights[EMBEDDING].float()
    config = Qwen3Config(**tiny_checkpoint.llm_config, attn_implementation="eager")
    llm = Qwen3ForCausalLM(config).eval()
    llm.load_state_dict(state, strict=True)
    return llm


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return load_tokenizer(tiny_checkpoint.llm_path)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    ids = [_prompt(tokenizer, q) for q in QUESTIONS]
    assert len({len(p) for p in ids}) == len(ids)  # different lengths: the batch is left-padded
    return ids


@pytest.fixture(scope="module")
def llm_decoder(llm_build):
    from canary_trt.decoding import GreedyDecoder

    return GreedyDecoder(llm_build / LLM_DECODER_ONNX, llm_build / EMBEDDINGS)


@pytest.fixture(scope="module")
def expected(base_llm, prompts, tokenizer):
    """Hugging Face greedy generate with the base weights, each prompt alone, cut at <|im_end|>."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(bos_token_id=None, eos_token_id=eos_id(tokenizer), pad_token_id=tokenizer.pad_token_id,
                              do_sample=False, num_beams=1, max_new_tokens=MAX_NEW)  # fmt: skip
    answers = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            new = base_llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)[0, len(prompt) :]
        new = new.tolist()
        answers.append(new[: new.index(eos_id(tokenizer))] if eos_id(tokenizer) in new else new)
    return answers


def _prefill_logits(session_path, embeddings, prompts):
    """Last-position logits of one left-padded prefill of `prompts` through an exported decoder graph."""
    from canary_trt.decoding import GreedyDecoder, Request, input_names

    decoder = GreedyDecoder(session_path, embeddings)
    rows = [decoder.embed(Request(np.array(p), None, 1, 0)) for p in prompts]
    width = max(map(len, rows))
    embeds, mask = np.zeros((len(rows), width, decoder.hidden), np.float32), np.zeros((len(rows), width), np.int64)
    for i, row in enumerate(rows):
        embeds[i, width - len(row) :], mask[i, width - len(row) :] = row, 1
    positions = np.maximum(mask.cumsum(axis=1) - 1, 0)
    empty = np.zeros((len(rows), decoder.kv_heads, 0, decoder.head_dim), np.float32)
    feeds = dict(zip(input_names(decoder.num_layers), [embeds, mask, positions] + [empty] * (2 * decoder.num_layers)))
    return decoder.session.run(["logits"], feeds)[0], (embeds, mask, positions)


@slow
def test_llm_decoder_is_the_base_llm_and_the_decoder_is_not(llm_build, base_llm, prompts):
    import torch

    logits, (embeds, mask, positions) = _prefill_logits(llm_build / LLM_DECODER_ONNX, llm_build / EMBEDDINGS, prompts)
    with torch.inference_mode():
        want = base_llm(inputs_embeds=torch.from_numpy(embeds), attention_mask=torch.from_numpy(mask),
                        position_ids=torch.from_numpy(positions)).logits[:, -1].numpy()  # fmt: skip
    merged, _ = _prefill_logits(llm_build / DECODER_ONNX, llm_build / EMBEDDINGS, prompts)
    diff, lora = np.abs(logits - want).max(), np.abs(merged - want).max()
    print(f"\nllm_decoder vs base transformers: max |logit diff| {diff:.2e}; decoder (LoRA merged) vs base: {lora:.2e}")
    assert diff < 1e-4
    assert lora > 0.01  # the merged LoRA moves the logits by far more than export rounding: llm_decoder has it off


@slow
def test_the_lora_leaves_the_embedding_so_both_decoders_share_it(tiny_checkpoint, llm_build):
    import torch

    from canary_trt.checkpoint import LLM_KEYS, merged_llm_weights

    weights = tiny_checkpoint.read_weights(LLM_KEYS)
    adapted = {key.split(".lora_")[0] for key in weights if ".lora_" in key}
    assert adapted and all(".self_attn." in stem and f"{stem}.base_layer.weight" in weights for stem in adapted)
    on, off = (merged_llm_weights(weights, scale, torch.float32) for scale in (tiny_checkpoint.lora_scale, 0.0))
    assert torch.equal(on["model.embed_tokens.weight"], off["model.embed_tokens.weight"])
    changed = {key for key in on if not torch.equal(on[key], off[key])}
    assert changed and all(".self_attn." in key for key in changed)  # only what the LoRA adapts
    stored = np.load(llm_build / EMBEDDINGS)
    assert np.array_equal(stored, off["model.embed_tokens.weight"].numpy())  # what llm_decoder.onnx is served with


@slow
def test_greedy_ids_match_transformers_generate(llm_decoder, prompts, expected, tokenizer):
    from canary_trt.decoding import Request

    requests = [Request(np.array(p), None, MAX_NEW, eos_id(tokenizer)) for p in prompts]
    assert llm_decoder.generate(requests) == expected  # a batch of 2, left-padded
    assert [llm_decoder.generate([r])[0] for r in requests] == expected
    assert len({tuple(e) for e in expected}) == len(expected) and all(expected)


# --- slow: llm_decoder served by the bundled tritonserver -----------------------------------------------------


@pytest.fixture(scope="module")
def llm_server(llm_build, tmp_path_factory):
    """llm_decoder alone (its config points at the build) on the bundled tritonserver."""
    from canary_trt.server import TritonServer

    repository = tmp_path_factory.mktemp("llm-repo")
    shutil.copytree(llm_build / "model_repository" / LLM_DECODER, repository / LLM_DECODER)
    with TritonServer(repository) as running:
        yield running


def _inputs(ids, new_tokens, end_id, streaming=None, **extra):
    tensors = {"input_ids": np.array([ids], np.int32), "input_lengths": np.array([[len(ids)]], np.int32),
               "request_output_len": np.array([[new_tokens]], np.int32), "end_id": np.array([[end_id]], np.int32),
               **({} if streaming is None else {"streaming": np.array([[streaming]], bool)}), **extra}  # fmt: skip
    inputs = []
    for name, value in tensors.items():
        tensor = grpcclient.InferInput(name, list(value.shape), "BOOL" if value.dtype == bool else "INT32")
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def _stream(server, requests: dict[str, list]) -> dict[str, list]:
    """Send every request on one gRPC stream; each one's responses as (output_ids[0, 0], sequence_length, final),
    or its error message."""
    answers, done = {key: [] for key in requests}, queue.Queue()

    def callback(result, error):
        if error is not None:
            done.put((None, str(error)))
            return
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param
        if response.outputs:
            answers[response.id].append((result.as_numpy("output_ids"), result.as_numpy("sequence_length"), final))
        if final:
            done.put((response.id, None))

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=callback)
        for key, inputs in requests.items():
            client.async_stream_infer(LLM_DECODER, inputs, request_id=key, enable_empty_final_response=True)
        for _ in requests:
            key, message = done.get(timeout=120)
            if message is not None:  # stream errors carry no request id: requests with errors go one per stream
                (key,) = requests
                answers[key] = message
        client.stop_stream()
    for key, responses in answers.items():
        if not isinstance(responses, str):
            assert all(ids.shape[:2] == (1, 1) and length.shape == (1, 1) for ids, length, _ in responses)
            answers[key] = [(ids[0, 0].tolist(), int(length[0, 0]), final) for ids, length, final in responses]
    return answers


@slow
@pytest.mark.parametrize("streaming", [None, False, True])
def test_served_llm_decoder_answers_as_the_tensorrtllm_backend(llm_server, llm_decoder, prompts, streaming):
    """Two requests on one stream (batched together): one ends at its length, one at end_id; each gets the
    backend's responses for the greedy ids, streamed or whole."""
    from canary_trt.decoding import Request

    (free,) = llm_decoder.generate([Request(np.array(prompts[1]), None, MAX_NEW, -1)])  # -1: never stops early
    stop_at = next(k for k in range(3, MAX_NEW) if free[k] not in free[:k])  # its first emission, at step k
    sent = {"length": _inputs(prompts[0], MAX_NEW, -1, streaming), "end_id": _inputs(prompts[1], MAX_NEW, free[stop_at], streaming)}
    want = {"length": llm_decoder.generate([Request(np.array(prompts[0]), None, MAX_NEW, -1)])[0], "end_id": free[:stop_at]}
    got = _stream(llm_server, sent)
    for key in sent:
        assert got[key] == backend_responses(want[key], MAX_NEW, bool(streaming)), key
    if streaming:
        assert got["length"][-1] == ([want["length"][-1]], 1, True)  # the flag rides on the last token
        assert got["end_id"][-1] == ([], 0, True)  # end_id is never output: an empty final response


@slow
def test_served_llm_decoder_refuses_what_the_budgets_cannot_hold(llm_server, prompts):
    budgets = LlmBudgets()
    context = budgets.max_context_tokens
    cases = {
        f"input_lengths {context} is over this build's max_context_tokens {context} less one new token":
            _inputs([1] * context, 1, 2),
        f"request_output_len {budgets.max_new_tokens + 1} is over this build's max_new_tokens {budgets.max_new_tokens}":
            _inputs(prompts[0], budgets.max_new_tokens + 1, 2),
        f"input_lengths + request_output_len {7000 + 2000} is over this build's max_context_tokens {context}":
            _inputs([1] * 7000, 2000, 2),
        "prompt_vocab_size": _inputs(prompts[0], 4, 2, prompt_vocab_size=np.array([[1]], np.int32)),  # text only
    }  # fmt: skip
    for message, inputs in cases.items():
        (answer,) = _stream(llm_server, {"bad": inputs}).values()
        assert isinstance(answer, str) and message.split(":")[0] in answer, answer
    assert _stream(llm_server, {"ok": _inputs(prompts[0], 2, -1, True)})["ok"][-1][2]  # still serving
