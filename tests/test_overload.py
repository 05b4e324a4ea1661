"""Live, on CPU: far above capacity, a server with bounded queues answers every request, either with its
tokens or with an explicit rejection, quickly, and stays ready."""

import asyncio
import time

import numpy as np

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from canary_trt.export.repository import MAX_QUEUE_SIZE, QUEUE_TIMEOUT_US, write_model_repository
from canary_trt.export_info import read_export_info
from canary_trt.server import TritonServer
from canary_trt.transcribe import transcribe

pytestmark = pytest.mark.slow  # live servers

MAX_NEW = 24
REQUESTS = 24
REJECTIONS = ("Exceeds maximum queue size", "Request timeout expired")


def test_default_queue_policy(cpu_build):
    for path in (cpu_build / "model_repository").glob("*/config.pbtxt"):
        config = text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())
        if config.platform == "ensemble":
            continue
        if config.HasField("sequence_batching"):  # canary_qwen_stream: no queue policy there; its sequence slots
            assert config.sequence_batching.oldest.max_candidate_sequences > 0, path  # bound it (test_streaming)
            continue
        policy = config.dynamic_batching.default_queue_policy
        assert policy.max_queue_size == MAX_QUEUE_SIZE["cpu"], path
        assert policy.default_timeout_microseconds == QUEUE_TIMEOUT_US["cpu"] >= 60_000_000
        assert policy.timeout_action == mc.ModelQueuePolicy.REJECT and policy.allow_timeout_override


@pytest.fixture(scope="module")
def tiny_queue_server(cpu_build, tmp_path_factory):
    repository = write_model_repository(cpu_build, read_export_info(cpu_build), out=tmp_path_factory.mktemp("overload") / "repo",
                                        overrides={"max_queue_size": 1, "queue_timeout_us": 300_000})  # fmt: skip
    with TritonServer(repository) as running:
        yield running


def test_far_above_capacity_every_request_is_answered_or_rejected(tiny_queue_server, reference, clips):
    (want,) = transcribe(reference, [clips["10s"]], max_new_tokens=MAX_NEW)

    async def run():
        # tritonclient's own async client, not AsyncTranscriptionClient: that one retries rejections, and
        # this test is about what the server answers
        async with aioclient.InferenceServerClient(tiny_queue_server.grpc_url) as client:
            calls = [client.infer("canary_qwen", _inputs(clips["10s"])) for _ in range(REQUESTS)]
            return await asyncio.gather(*calls, return_exceptions=True)

    start = time.monotonic()
    results = asyncio.run(asyncio.wait_for(run(), 60))
    assert time.monotonic() - start < 60
    answered = [r for r in results if not isinstance(r, BaseException)]
    rejected = [r for r in results if isinstance(r, BaseException)]
    for result in answered:
        assert result.as_numpy("TOKEN_IDS").reshape(-1).tolist() == want.token_ids
    for error in rejected:
        assert isinstance(error, InferenceServerException), repr(error)
        assert any(reason in error.message() for reason in REJECTIONS), error.message()
    assert len(answered) + len(rejected) == REQUESTS
    assert rejected, "a queue of 1 should have rejected some of 24 concurrent requests"
    print(f"{len(answered)} answered, {len(rejected)} rejected: {sorted({e.message() for e in rejected})}")
    with grpcclient.InferenceServerClient(tiny_queue_server.grpc_url) as triton:
        assert triton.is_server_ready()
    tiny_queue_server.check()


def _inputs(wav):
    inputs = []
    for name, value, dtype in (("WAV", wav[None], "FP32"), ("WAV_LENS", np.array([[len(wav)]], np.int32), "INT32"),
                               ("MAX_NEW_TOKENS", np.array([[MAX_NEW]], np.int32), "INT32")):  # fmt: skip
        inputs.append(aioclient.InferInput(name, list(value.shape), dtype))
        inputs[-1].set_data_from_numpy(value)
    return inputs
