"""Live, end to end on CPU: tiny checkpoint -> export -> the real tritonserver -> gRPC. Every clip's
TOKEN_IDS must equal the PyTorch reference's, one request at a time and 16 concurrent mixed lengths."""

import asyncio
from pathlib import Path

import pytest

from canary_trt.client import AsyncTranscriptionClient, TranscriptionClient
from canary_trt.server import TritonServer
from canary_trt.transcribe import transcribe

pytestmark = pytest.mark.slow  # live servers

MAX_NEW = 24
NAMES = ["1s", "0880", "0930", "0890", "0920", "0870", "10s", "35s"]


@pytest.fixture(scope="module")
def server(cpu_build):
    with TritonServer(cpu_build / "model_repository") as running:
        yield running
    # a stopped server leaves nothing behind
    assert not any(Path("/dev/shm").glob(running.shm_prefix + "*"))
    assert not Path(f"/proc/{running.pid}").exists()


@pytest.fixture(scope="module")
def expected(reference, clips):
    return {name: transcribe(reference, [clips[name]], max_new_tokens=MAX_NEW)[0] for name in NAMES}


def test_sequential_requests_match_the_reference(server, clips, expected):
    with TranscriptionClient(server.grpc_url) as client:
        for name in NAMES:
            result = client.transcribe(clips[name], sample_rate=16000, max_new_tokens=MAX_NEW)
            assert result.token_ids == expected[name].token_ids, name
            assert result.text == expected[name].text


def test_16_concurrent_mixed_lengths_match_the_reference(server, clips, expected):
    names = (NAMES * 2)[:16]

    async def run():
        async with AsyncTranscriptionClient(server.grpc_url, concurrency=16) as client:
            return await client.transcribe_many([clips[n] for n in names], sample_rate=16000, max_new_tokens=MAX_NEW)

    before = _decoder_stats(server)
    results = asyncio.run(run())
    for name, result in zip(names, results):
        assert result.token_ids == expected[name].token_ids, name
    inferences, executions = (a - b for a, b in zip(_decoder_stats(server), before))
    assert inferences == 16 and executions < 16, "the decoder should have batched concurrent requests"


def test_prompt_and_default_length(server, reference, clips):
    instruction = "Transcribe the following in Polish:"
    (want,) = transcribe(reference, [clips["0880"]], max_new_tokens=6, instruction=instruction)
    with TranscriptionClient(server.grpc_url) as client:
        got = client.transcribe(clips["0880"], sample_rate=16000, prompt=instruction, max_new_tokens=6)
        assert got.token_ids == want.token_ids
        assert len(client.transcribe(clips["1s"], sample_rate=16000).token_ids) <= 128  # server default


def test_the_adapter_hands_the_decoder_the_fp32_table_unchanged(server, cpu_build):
    """CPU flavour: the prompt table reaching the fp32 decoder is the encoder's FP32 output, not rounded to FP16
    (the GPU engine's type), so served tokens are exact on full-size weights too, not only on tiny."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    from canary_trt.export_info import read_export_info

    rows = 5
    # values within 1e-6 of 1, which FP16 cannot hold (it rounds them to 1)
    embeddings = (1 + np.random.default_rng(0).random((1, rows, read_export_info(cpu_build)["hidden_size"])) * 1e-6)
    inputs = {"audio_embeddings": embeddings.astype(np.float32), "audio_lengths": np.array([[rows]], np.int32)}
    tensors = []
    for name, value in inputs.items():
        tensors.append(grpcclient.InferInput(name, value.shape, np_to_triton_dtype(value.dtype)))
        tensors[-1].set_data_from_numpy(value)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        table = client.infer("adapter", tensors).as_numpy("prompt_embedding_table")
    assert table.dtype == np.float32 and np.array_equal(table, inputs["audio_embeddings"])


def _decoder_stats(server):
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics("decoder").model_stats[0]
    return stats.inference_count, stats.execution_count
