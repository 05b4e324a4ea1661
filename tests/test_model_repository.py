"""Both flavours' filled model repositories: every config parses with Triton's own protobuf, and the
ensemble is wired: every tensor a step consumes is produced upstream with the same dtype and dims."""

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from canary_trt.export.build import export

MODELS = {"audio_check", "encoder", "adapter", "decoder", "detokenizer", "canary_qwen", "canary_qwen_long",
          "canary_qwen_stream"}  # fmt: skip
PUBLIC_INPUTS = {"WAV": (mc.TYPE_FP32, [-1]), "WAV_LENS": (mc.TYPE_INT32, [1]),
                 "PROMPT": (mc.TYPE_STRING, [1]), "MAX_NEW_TOKENS": (mc.TYPE_INT32, [1])}  # fmt: skip
PUBLIC_OUTPUTS = {"TRANSCRIPT": (mc.TYPE_STRING, [1]), "TOKEN_IDS": (mc.TYPE_INT32, [-1])}
DECODER_INPUTS = {"input_ids", "input_lengths", "request_output_len", "end_id", "pad_id", "prompt_embedding_table",
                  "prompt_vocab_size", "runtime_top_k"}  # fmt: skip


@pytest.fixture(scope="module")
def gpu_repository(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-build")
    export(tiny_checkpoint.path, out, target="gpu", preset="h100", dry_run=True, log=lambda line: None)
    return out / "model_repository"


@pytest.fixture(params=["cpu", "gpu"])
def repository(request, cpu_build, gpu_repository):
    return cpu_build / "model_repository" if request.param == "cpu" else gpu_repository


def load(repository) -> dict[str, mc.ModelConfig]:
    configs = {}
    for path in sorted(repository.glob("*/config.pbtxt")):
        text = path.read_text(encoding="utf-8")
        assert "${" not in text, f"unfilled placeholder in {path}"
        configs[path.parent.name] = text_format.Parse(text, mc.ModelConfig())
        assert configs[path.parent.name].name == path.parent.name
        assert (path.parent / "1").is_dir()
    return configs


def _dims(tensor):
    return list(tensor.dims)


def _compatible(a, b):
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b))


def test_configs_parse_and_ensemble_is_wired(repository):
    configs = load(repository)
    assert set(configs) == MODELS
    ensemble = configs["canary_qwen"]
    assert ensemble.platform == "ensemble"
    assert {i.name: (i.data_type, _dims(i)) for i in ensemble.input} == PUBLIC_INPUTS
    assert {o.name: (o.data_type, _dims(o)) for o in ensemble.output} == PUBLIC_OUTPUTS
    assert {i.name for i in ensemble.input if i.optional} == {"PROMPT", "MAX_NEW_TOKENS"}
    # One clip per request in both flavours: the tensorrtllm backend refuses a multi-sequence request that is
    # not decoupled (utils.cc, createRequestsFromInputTensors), so Triton refuses it at the ensemble instead.
    assert ensemble.max_batch_size == 1

    available = {i.name: (i.data_type, _dims(i), i.optional) for i in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert 0 < ensemble.max_batch_size <= model.max_batch_size, step.model_name
        inputs = {i.name: i for i in model.input}
        for key, tensor_name in step.input_map.items():
            assert key in inputs, f"{step.model_name} has no input {key}"
            assert tensor_name in available, f"{step.model_name}.{key} <- {tensor_name}: produced by nobody upstream"
            dtype, dims, optional = available[tensor_name]
            assert dtype == inputs[key].data_type, f"{step.model_name}.{key}: dtype mismatch"
            assert _compatible(dims, _dims(inputs[key])), f"{step.model_name}.{key}: dims {dims} vs {_dims(inputs[key])}"
            assert not optional or inputs[key].optional, f"{step.model_name}.{key} is required but fed an optional input"
        missing = {i.name for i in model.input if not i.optional} - set(step.input_map)
        assert not missing, f"{step.model_name}: required inputs not fed: {missing}"
        outputs = {o.name: o for o in model.output}
        for key, tensor_name in step.output_map.items():
            assert key in outputs, f"{step.model_name} has no output {key}"
            available[tensor_name] = (outputs[key].data_type, _dims(outputs[key]), False)
    for name, (dtype, dims) in PUBLIC_OUTPUTS.items():
        assert available[name][:2] == (dtype, dims)


def test_stream_model_is_a_sequence_with_the_long_form_segmenter(repository):
    """canary_qwen_stream: decoupled, Triton's idle time its own, sequence slots beyond max_streams (so that the
    next START reaches the model and is refused by name), and canary_qwen_long's segmenter options."""
    configs = load(repository)
    stream, long = configs["canary_qwen_stream"], configs["canary_qwen_long"]
    params = {k: v.string_value for k, v in stream.parameters.items()}
    assert stream.model_transaction_policy.decoupled and len(stream.instance_group) == 1
    batching = stream.sequence_batching
    assert batching.WhichOneof("strategy_choice") == "oldest"
    assert batching.oldest.max_candidate_sequences > int(params["max_streams"]) == 16
    assert batching.max_sequence_idle_microseconds == float(params["stream_idle_s"]) * 1e6 == 30e6
    kinds = {c.name: c.control[0].kind for c in batching.control_input}
    assert kinds == {"START": mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START,
                     "END": mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_END,
                     "CORRID": mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID}  # fmt: skip
    segmenter = {k: v.string_value for k, v in long.parameters.items() if k not in ("max_long_audio_seconds",)}
    assert {k: params[k] for k in segmenter} == segmenter  # build_dir, max_chunks_in_flight and every option


def test_decoder_speaks_the_tensorrt_llm_contract(cpu_build, gpu_repository):
    """The CPU stand-in declares exactly the inputs and outputs of the GPU tensorrtllm model, but for the prompt
    table's type: FP16 is the GPU engine's, the CPU flavour keeps the embeddings' FP32 (exact end to end)."""
    cpu, gpu = load(cpu_build / "model_repository")["decoder"], load(gpu_repository)["decoder"]
    assert cpu.backend == "python" and gpu.backend == "tensorrtllm"
    assert {i.name for i in gpu.input} == DECODER_INPUTS
    assert list(cpu.output) == list(gpu.output)
    cpu_table, gpu_table = ({i.name: i for i in c.input}["prompt_embedding_table"] for c in (cpu, gpu))
    assert cpu_table.data_type == mc.TYPE_FP32 and gpu_table.data_type == mc.TYPE_FP16 and gpu_table.allow_ragged_batch
    cpu_table.data_type = mc.TYPE_FP16
    assert list(cpu.input) == list(gpu.input)


@pytest.mark.parametrize("flavour, dtype", [("cpu", mc.TYPE_FP32), ("gpu", mc.TYPE_FP16)])
def test_adapter_sends_the_prompt_table_in_the_decoders_type(flavour, dtype, cpu_build, gpu_repository):
    configs = load(cpu_build / "model_repository" if flavour == "cpu" else gpu_repository)
    sent = {o.name: o.data_type for o in configs["adapter"].output}["prompt_embedding_table"]
    taken = {i.name: i.data_type for i in configs["decoder"].input}["prompt_embedding_table"]
    assert sent == taken == dtype


def test_gpu_flavour_specifics(gpu_repository, tiny_checkpoint):
    configs = load(gpu_repository)
    encoder, decoder = configs["encoder"], configs["decoder"]
    assert encoder.platform == "tensorrt_plan" and encoder.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert encoder.max_batch_size == 32  # h100 preset: the engine profile's max batch
    assert (gpu_repository / "encoder" / "1" / "model.plan").is_symlink()
    params = {k: v.string_value for k, v in decoder.parameters.items()}
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["exclude_input_in_output"] == "true" and params["enable_kv_cache_reuse"] == "false"
    assert params["gpt_model_path"].endswith("trtllm_engine")
    assert decoder.max_batch_size == 256
    assert configs["audio_check"].backend == "python"  # bad audio is refused before the TensorRT engine
    assert float(configs["audio_check"].parameters["bucket_seconds"].string_value) > 0  # equal shapes batch
    for name in ("audio_check", "adapter", "detokenizer"):  # the container's own Python, not this machine's venv
        assert "EXECUTION_ENV_PATH" not in configs[name].parameters


def test_cpu_flavour_specifics(cpu_build):
    configs = load(cpu_build / "model_repository")
    assert configs["audio_check"].backend == "python"
    for name in ("encoder", "adapter", "decoder", "detokenizer"):
        assert configs[name].backend == "python"
        assert configs[name].parameters["build_dir"].string_value == str(cpu_build.resolve())
        # on CPU nothing waits for a batch: the decoder batches in flight, the encoder runs each clip alone
        assert configs[name].dynamic_batching.max_queue_delay_microseconds == 0
    assert {i.name: i.allow_ragged_batch for i in configs["encoder"].input}["WAV"]
