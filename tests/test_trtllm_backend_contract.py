"""The filled GPU decoder config against the tensorrtllm Triton backend's own contract.

TensorRT-LLM cannot be installed here, so the contract is data, read off the upstream source line by line
(NVIDIA/TensorRT-LLM, stored revisions around release 1.2; commits below): which parameters the backend
reads, which of them it reads without a default (absent = the model fails to load), how it parses each
value, and the template's tensor specs. A value the backend cannot parse is no load failure for an optional
parameter: it silently falls back to the default, which is why the values are parsed here the same way."""

import re

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from canary_trt.export.build import export
from canary_trt.export.presets import LLM_DTYPE
from canary_trt.export.repository import QUEUE_DELAY_US, write_model_repository
from canary_trt.export_info import read_export_info

UPSTREAM = "NVIDIA/TensorRT-LLM"
SRC = "triton_backend/inflight_batcher_llm/src"
MODEL_INSTANCE_STATE = (f"{SRC}/model_instance_state.cc", "c8c6df08bd0ead54cd47f7973e1e425c28a174cd")
MODEL_STATE = (f"{SRC}/model_state.cc", "5cdd69218f8815d6c8c101ca1facf2ec4ac4b622")
UTILS_CC = (f"{SRC}/utils.cc", "c8c6df08bd0ead54cd47f7973e1e425c28a174cd")
UTILS_H = (f"{SRC}/utils.h", "89fd9b74ab7ae753b4c6b3db25a400dca7ea54a0")
TEMPLATE = ("triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt",
            "2a9abd9536aa62ad3e4b9314be9286b1b1be523b")  # fmt: skip
INFLIGHT_BATCHING = ("cpp/tensorrt_llm/batch_manager/trtGptModelInflightBatching.cpp",
                     "b35ac1b64368513d215c57d2ed01d62d910df8da")  # fmt: skip
LLM_REQUEST = ("cpp/tensorrt_llm/batch_manager/llmRequest.cpp", "89fd9b74ab7ae753b4c6b3db25a400dca7ea54a0")

# Read with GetParameter outside any try/catch: absent -> "Cannot find parameter with name: <name>" and
# "unexpected error when creating modelInstanceState" at load. name -> (type, reading function, source).
REQUIRED = {
    "gpt_model_type": ("choice", "getBatchingTypeFromParams", MODEL_INSTANCE_STATE),
    "tokenizer_dir": ("string", "getGuidedDecodingConfigFromParams", MODEL_INSTANCE_STATE),
    "xgrammar_tokenizer_info_path": ("string", "getGuidedDecodingConfigFromParams", MODEL_INSTANCE_STATE),
    "guided_decoding_backend": ("choice", "getGuidedDecodingConfigFromParams", MODEL_INSTANCE_STATE),
}
# Read in a try/catch, but the ModelInstanceState constructor then fails when neither path exists
# ("Both encoder and decoder model paths are empty"); a decoder-only model needs this one.
REQUIRED_IN_FACT = {"gpt_model_path": ("path", "ModelInstanceState::ModelInstanceState", MODEL_INSTANCE_STATE)}
# Read in a try/catch: absent or unparsable -> the default (None: left to the executor). name -> (type, default).
OPTIONAL = {
    # model_instance_state.cc getExecutorConfigFromParams
    "max_beam_width": ("int32", 1),
    "iter_stats_max_iterations": ("int32", "ExecutorConfig::kDefaultIterStatsMaxIterations"),
    "request_stats_max_iterations": ("int32", "ExecutorConfig::kDefaultRequestStatsMaxIterations"),
    "enable_trt_overlap": ("bool", "deprecated: read only to log that it is ignored"),
    "normalize_log_probs": ("bool", True),
    "enable_chunked_context": ("bool", False),
    "decoding_mode": ("choice", "top_k_top_p with beam 1, else beam_search"),
    "medusa_choices": ("vecvec", None),
    "eagle_choices": ("vecvec", None),
    "lookahead_window_size": ("uint32", "required when decoding_mode is lookahead"),
    "lookahead_ngram_size": ("uint32", "required when decoding_mode is lookahead"),
    "lookahead_verification_set_size": ("uint32", "required when decoding_mode is lookahead"),
    "gpu_weights_percent": ("float01", 1.0),
    "recv_poll_period_ms": ("int32", 0),
    # getSchedulerConfigFromParams
    "batch_scheduler_policy": ("choice", "guaranteed_no_evict"),
    # getKvCacheConfigFromParams
    "max_tokens_in_paged_kv_cache": ("int32", None),
    "kv_cache_free_gpu_mem_fraction": ("fraction", "None: the executor's 0.9"),
    "cross_kv_cache_fraction": ("fraction", None),
    "kv_cache_host_memory_bytes": ("uint64", None),
    "kv_cache_onboard_blocks": ("bool", True),
    "max_attention_window_size": ("intlist", "None: max_sequence_length"),
    "sink_token_length": ("int32", None),
    "enable_kv_cache_reuse": ("bool", True),
    # getExtendedRuntimePerfKnobConfigFromParams
    "multi_block_mode": ("bool", True),
    "enable_context_fmha_fp32_acc": ("bool", False),
    "cuda_graph_mode": ("bool", False),
    "cuda_graph_cache_size": ("int32", 0),
    # getParallelConfigFromParams; model_state.cc LoadParameters / GetExecutorWorkerPath
    "num_nodes": ("int32", 1),
    "gpu_device_ids": ("idlists", None),
    "participant_ids": ("idlists", "None; required in orchestrator mode without spawned processes"),
    "executor_worker_path": ("string", "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker"),
    # getPeftCacheConfigFromParams
    "lora_cache_max_adapter_size": ("int32", 64),
    "lora_cache_optimal_adapter_size": ("int32", 8),
    "lora_cache_gpu_memory_fraction": ("fraction", "None: 0.05 per the backend's warning"),
    "lora_cache_host_memory_bytes": ("uint64", "None: 1 GB per the backend's warning"),
    "lora_prefetch_dir": ("string", None),
    # getSpeculativeDecodingConfigFromParams
    "speculative_decoding_fast_logits": ("bool", False),
    # ModelInstanceState constructor
    "encoder_model_path": ("path", None),
    "exclude_input_in_output": ("bool", False),
    "cancellation_check_period_ms": ("int32", 100),
    "stats_check_period_ms": ("int32", 100),
}
# Read, but setting them breaks this deployment. name -> why (and where).
MUST_NOT_SET = {
    "encoder_model_path": "an existing path makes the model encoder-decoder (model_instance_state.cc)",
    "cross_kv_cache_fraction": "TLLM_CHECK 'Do not set crossKvCacheFraction for decoder-only model' "
                               "(trtGptModelInflightBatching.cpp @ b35ac1b6)",
    "worker_path": "no longer supported (model_state.cc GetExecutorWorkerPath)",
}
CHOICES = {
    "gpt_model_type": {"V1", "v1", "inflight_batching", "inflight_fused_batching"},
    "batch_scheduler_policy": {"max_utilization", "guaranteed_no_evict"},
    "decoding_mode": {"top_k", "top_p", "top_k_top_p", "beam_search", "medusa", "redrafter", "lookahead", "eagle"},
    "guided_decoding_backend": {"", "xgrammar"},  # empty (or its literal placeholder): guided decoding off
}
KNOWN = set(REQUIRED) | set(REQUIRED_IN_FACT) | set(OPTIONAL)

# model_state.cc GetParameter<bool>: exactly these strings, anything else throws.
BOOL_STRINGS = {"True": True, "true": True, "TRUE": True, "1": True,
                "False": False, "false": False, "FALSE": False, "0": False}  # fmt: skip
INT32 = (-(2**31), 2**31 - 1)

# The template's specs of the tensors we use (TEMPLATE @ 2a9abd95): name -> (dtype, dims, reshape, optional).
# prompt_embedding_table's dtype there is ${prompt_embedding_table_data_type}: it must be the engine's
# dtype (cpp/tensorrt_llm/batch_manager/promptTuningBuffers.cpp @ 2a9abd95 refuses any other).
TEMPLATED = None
TEMPLATE_INPUTS = {
    "input_ids": (mc.TYPE_INT32, [-1], None, True),
    "input_lengths": (mc.TYPE_INT32, [1], [], False),
    "request_output_len": (mc.TYPE_INT32, [1], [], False),
    "end_id": (mc.TYPE_INT32, [1], [], True),
    "pad_id": (mc.TYPE_INT32, [1], [], True),
    "prompt_embedding_table": (TEMPLATED, [-1, -1], None, True),
    "prompt_vocab_size": (mc.TYPE_INT32, [1], [], True),
    "runtime_top_k": (mc.TYPE_INT32, [1], [], True),
    "runtime_top_p": (mc.TYPE_FP32, [1], [], True),
    "temperature": (mc.TYPE_FP32, [1], [], True),
    "beam_width": (mc.TYPE_INT32, [1], [], True),
    "seed": (mc.TYPE_UINT64, [1], [], True),
    "exclude_input_in_output": (mc.TYPE_BOOL, [1], [], True),
    "streaming": (mc.TYPE_BOOL, [1], [], True),
    "stop": (mc.TYPE_BOOL, [1], [], True),
}
TEMPLATE_OUTPUTS = {"output_ids": (mc.TYPE_INT32, [-1, -1]), "sequence_length": (mc.TYPE_INT32, [-1])}
# utils.cc createRequestsFromInputTensors: a request without these is refused; model_instance_state.cc
# fillTritonResponse: a request that does not ask for these outputs is answered with an error.
REQUIRED_INPUTS = {"input_ids", "request_output_len"}
REQUIRED_OUTPUTS = {"output_ids", "sequence_length"}
ENGINE_TABLE_DTYPE = {"float16": mc.TYPE_FP16, "bfloat16": mc.TYPE_BF16, "float32": mc.TYPE_FP32}


# What a decoupled model (llm_decoder) sends for one sequence. model_instance_state.cc fillTritonResponse: every
# response holds output_ids [1, beams, n] = the executor Result's outputTokenIds and sequence_length [1, beams] = n,
# that response's own token count; WaitForResponse sends Result.isFinal with TRITONSERVER_RESPONSE_COMPLETE_FINAL
# (the last sequence of a request) and every other response with flags 0; an executor error is one final error
# response. LLM_REQUEST LlmRequest::createResult: not streaming, one Result when the request finishes, holding
# every token (the prompt too, unless exclude_input_in_output); streaming, a Result whenever the sequence grew
# since the last one, holding only the new tokens (maxNbTokens - getMaxSentTokenLen()), and one when it finishes,
# whatever it holds. The executor stops at end_id without outputting it (maintainers, NVIDIA/TensorRT-LLM#2190):
# the step that meets it adds no token, so the final Result then holds none.
STREAMING_SOURCES = (MODEL_INSTANCE_STATE, LLM_REQUEST, ("issue", "NVIDIA/TensorRT-LLM#2190"))


def backend_responses(generated: list[int], request_output_len: int, streaming: bool) -> list[tuple[list[int], int, bool]]:
    """(output_ids[0, 0], sequence_length[0, 0], final flag) per response, in order, for one sequence whose greedy
    ids are `generated` (end_id excluded) with exclude_input_in_output true, by the rules above."""
    if not streaming:
        return [(generated, len(generated), True)]
    responses = [([token], 1, False) for token in generated]  # greedy: one new token per engine step
    if generated and len(generated) == request_output_len:  # finished by its length: the flag rides on the last token
        return responses[:-1] + [([generated[-1]], 1, True)]
    return responses + [([], 0, True)]  # finished at end_id: an empty final response


def test_backend_responses():
    assert backend_responses([5, 6], 2, streaming=False) == [([5, 6], 2, True)]
    assert backend_responses([5, 6], 2, streaming=True) == [([5], 1, False), ([6], 1, True)]
    assert backend_responses([5], 4, streaming=True) == [([5], 1, False), ([], 0, True)]
    assert backend_responses([], 4, streaming=True) == [([], 0, True)]


def parse(kind: str, name: str, value: str):
    """`value` as the backend reads a parameter of this kind (stricter: no trailing garbage, which std::stoi
    would drop). Raises ValueError where the backend would throw or fall back to the default."""
    if kind in ("string", "path"):
        return value
    if kind == "bool":
        if value not in BOOL_STRINGS:
            raise ValueError(f"{name}: {value!r} is not a backend boolean")
        return BOOL_STRINGS[value]
    if kind == "choice":
        if value not in CHOICES[name]:
            raise ValueError(f"{name}: {value!r} not in {sorted(CHOICES[name])}")
        return value
    if kind in ("int32", "uint32", "uint64"):
        if not re.fullmatch(r"[0-9]+" if kind.startswith("u") else r"-?[0-9]+", value):
            raise ValueError(f"{name}: {value!r} is not an integer")
        number = int(value)
        if kind == "int32" and not INT32[0] <= number <= INT32[1]:
            raise ValueError(f"{name}: {value} overflows int32")
        return number
    if kind in ("fraction", "float01"):
        number = float(value)
        if not (0 < number < 1 if kind == "fraction" else 0 <= number <= 1):
            raise ValueError(f"{name}: {number} outside {'(0, 1)' if kind == 'fraction' else '[0, 1]'}")
        return number
    if kind == "intlist":  # utils.cc csvStrToVecInt
        return [parse("int32", name, v.strip()) for v in value.split(",")]
    if kind == "idlists":  # model_state.cc: ';' between instances, ',' between ids
        return [parse("intlist", name, group) for group in value.split(";")]
    if kind == "vecvec":  # utils.cc csvStrToVecVecInt: {1,2},{3}
        groups = re.findall(r"\{([^{}]*)\}", value)
        if not groups:
            raise ValueError(f"{name}: {value!r} is not {{..}},{{..}}")
        return [parse("intlist", name, g) for g in groups]
    raise AssertionError(f"unknown kind {kind}")


def kind_of(name: str) -> str:
    return {**{k: v[0] for k, v in REQUIRED.items()}, **{k: v[0] for k, v in REQUIRED_IN_FACT.items()},
            **{k: v[0] for k, v in OPTIONAL.items()}}[name]  # fmt: skip


@pytest.fixture(scope="module")
def gpu_build(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-build")
    export(tiny_checkpoint.path, out, target="gpu", preset="h100", dry_run=True, log=lambda line: None)
    return out


def _load(repository, model: str) -> mc.ModelConfig:
    text = (repository / model / "config.pbtxt").read_text(encoding="utf-8")
    assert "${" not in text
    return text_format.Parse(text, mc.ModelConfig())


@pytest.fixture(scope="module")
def decoder(gpu_build) -> mc.ModelConfig:
    return _load(gpu_build / "model_repository", "decoder")


@pytest.fixture(scope="module")
def params(decoder) -> dict[str, str]:
    return {k: v.string_value for k, v in decoder.parameters.items()}


def test_contract_data_is_consistent():
    assert not set(REQUIRED) & set(OPTIONAL) and not set(REQUIRED_IN_FACT) & set(OPTIONAL)
    assert set(MUST_NOT_SET) - {"worker_path"} <= KNOWN
    assert all(re.fullmatch(r"[0-9a-f]{40}", sha) for _, sha in
               (MODEL_INSTANCE_STATE, MODEL_STATE, UTILS_CC, UTILS_H, TEMPLATE, INFLIGHT_BATCHING, LLM_REQUEST))  # fmt: skip
    assert parse("bool", "x", "TRUE") is True and parse("bool", "x", "0") is False
    for kind, bad in (("bool", "yes"), ("bool", ""), ("int32", "12abc"), ("int32", "${n}"), ("fraction", "1.0"),
                      ("choice", "inflight")):  # fmt: skip
        with pytest.raises(ValueError):
            parse(kind, "gpt_model_type" if kind == "choice" else "x", bad)
    assert parse("idlists", "gpu_device_ids", "0,1;2,3") == [[0, 1], [2, 3]]
    assert parse("vecvec", "medusa_choices", "{0, 0}, {1}") == [[0, 0], [1]]


def test_every_required_parameter_is_set(params, gpu_build):
    for name in (*REQUIRED, *REQUIRED_IN_FACT):
        assert name in params, f"{name}: read without a default by {REQUIRED.get(name, REQUIRED_IN_FACT.get(name))}"
        assert params[name] != f"${{{name}}}", f"{name}: unfilled placeholder"
    assert params["gpt_model_type"] in {"inflight_batching", "inflight_fused_batching"}  # in-flight batching
    assert params["gpt_model_path"] == str((gpu_build / read_export_info(gpu_build)["llm_engine"]).resolve())


def test_guided_decoding_is_off(params):
    """Off when guided_decoding_backend or xgrammar_tokenizer_info_path is empty (model_instance_state.cc)."""
    assert params["guided_decoding_backend"] == "" and params["xgrammar_tokenizer_info_path"] == ""


def test_every_value_parses_as_the_backend_parses_it(params):
    parsed = {name: parse(kind_of(name), name, value) for name, value in params.items() if name in KNOWN}
    assert parsed["max_beam_width"] == 1
    assert parsed["exclude_input_in_output"] is True  # the detokenizer gets generated tokens only
    assert parsed["enable_kv_cache_reuse"] is False  # the backend's default is True: it must be said
    assert parsed["enable_chunked_context"] is True  # the engine is built with use_paged_context_fmha
    assert 0 < parsed["kv_cache_free_gpu_mem_fraction"] < 1
    # cuda_graph_cache_size must be >= 0 (executor/extendedRuntimePerfKnobConfig.cpp validates it); with
    # graphs on, 0 would cache none.
    assert parsed["cuda_graph_cache_size"] >= 0
    assert not parsed["cuda_graph_mode"] or parsed["cuda_graph_cache_size"] > 0
    if "kv_cache_onboard_blocks" in parsed:  # paged context FMHA needs onboarded blocks
        assert parsed["kv_cache_onboard_blocks"]


def test_nothing_unknown_to_the_backend_is_set(params):
    assert set(params) <= KNOWN, f"not read by the backend at {MODEL_INSTANCE_STATE[1][:8]}: {set(params) - KNOWN}"
    assert not set(params) & set(MUST_NOT_SET), {k: MUST_NOT_SET[k] for k in set(params) & set(MUST_NOT_SET)}


def test_batching_policy(decoder, gpu_build):
    assert decoder.backend == "tensorrtllm"
    assert not decoder.model_transaction_policy.decoupled  # one sequence per request (see the ensemble)
    assert decoder.dynamic_batching.max_queue_delay_microseconds == 0  # the executor batches in flight
    encoder = _load(gpu_build / "model_repository", "encoder")
    assert encoder.dynamic_batching.max_queue_delay_microseconds == QUEUE_DELAY_US["gpu"]
    # The backend hands this to the executor as its queue bound (getExecutorConfigFromParams).
    assert decoder.dynamic_batching.default_queue_policy.max_queue_size > 0


def test_tensors_match_the_template(decoder):
    _check_tensors(decoder)
    assert {i.name: i for i in decoder.input}["prompt_embedding_table"].allow_ragged_batch


def _check_tensors(decoder: mc.ModelConfig) -> None:
    inputs = {i.name: i for i in decoder.input}
    assert REQUIRED_INPUTS <= set(inputs) and set(inputs) <= set(TEMPLATE_INPUTS)
    for name, tensor in inputs.items():
        dtype, dims, reshape, optional = TEMPLATE_INPUTS[name]
        expected_dtype = ENGINE_TABLE_DTYPE[LLM_DTYPE] if dtype is TEMPLATED else dtype
        assert tensor.data_type == expected_dtype, name
        assert list(tensor.dims) == dims, name
        assert (list(tensor.reshape.shape) if tensor.HasField("reshape") else None) == reshape, name
        assert tensor.optional <= optional, f"{name}: optional here, required in the template"
    assert inputs["input_ids"].allow_ragged_batch
    outputs = {o.name: (o.data_type, list(o.dims)) for o in decoder.output}
    assert REQUIRED_OUTPUTS <= set(outputs) and outputs.items() <= TEMPLATE_OUTPUTS.items()


def test_llm_decoder_is_decoupled_streams_and_parses(tiny_checkpoint, tmp_path):
    """--llm-mode's base LLM: the same template filled for its own engine, decoupled (utils.cc
    createRequestsFromInputTensors refuses `streaming` otherwise), with the streaming input and no prompt table."""
    export(tiny_checkpoint.path, tmp_path, target="gpu", preset="h100", dry_run=True, llm_mode=True, log=lambda line: None)
    llm = _load(tmp_path / "model_repository", "llm_decoder")
    params = {k: v.string_value for k, v in llm.parameters.items()}
    assert llm.backend == "tensorrtllm" and llm.model_transaction_policy.decoupled
    _check_tensors(llm)
    assert "streaming" in {i.name for i in llm.input} and "prompt_embedding_table" not in {i.name for i in llm.input}
    assert set(params) <= KNOWN and all(name in params for name in (*REQUIRED, *REQUIRED_IN_FACT))
    parsed = {name: parse(kind_of(name), name, value) for name, value in params.items()}
    assert parsed["exclude_input_in_output"] is True  # backend_responses: generated tokens only
    assert parsed["gpt_model_path"] == str((tmp_path / read_export_info(tmp_path)["llm_decoder_engine"]).resolve())


def test_cuda_graphs_can_be_switched_off(gpu_build, tmp_path):
    """For an on/off comparison on the GPU: the same build, graphs off."""
    out = write_model_repository(gpu_build, read_export_info(gpu_build), out=tmp_path / "repo",
                                 overrides={"decoder_cuda_graph_mode": "false"})  # fmt: skip
    config = _load(out, "decoder")
    assert config.parameters["cuda_graph_mode"].string_value == "false"
