"""The exported encoder: a TensorRT-friendly front end with NeMo parity, and embeddings that drive the
decoder to exactly the reference's tokens."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from canary_trt.encoding import encode
from canary_trt.export.encoder_onnx import export_encoder_onnx
from canary_trt.frontend import LogMelFrontend
from canary_trt.tokenizer import asr_prompt_ids

pytestmark = pytest.mark.slow  # exports through NeMo

CASES = {"1s": ["1s"], "10s": ["10s"], "35s": ["35s"], "mixed batch": ["0880", "35s", "1s", "0870", "10s"]}


def _batch(waveforms):
    lengths = np.array([len(w) for w in waveforms], dtype=np.int32)
    batch = np.zeros((len(waveforms), lengths.max()), dtype=np.float32)
    for i, w in enumerate(waveforms):
        batch[i, : len(w)] = w
    return batch, lengths


@pytest.fixture(scope="module")
def encoder_onnx(tiny_checkpoint, tmp_path_factory):
    return export_encoder_onnx(tiny_checkpoint, tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="module")
def session(encoder_onnx):
    return ort.InferenceSession(str(encoder_onnx), providers=["CPUExecutionProvider"])


def test_frontend_matches_nemo_preprocessor(reference, tiny_checkpoint, clips):
    frontend = LogMelFrontend.from_weights(tiny_checkpoint.read_weights(), tiny_checkpoint.config["perception"]["preprocessor"])
    batch, lengths = _batch([clips[name] for name in CASES["mixed batch"]])
    with torch.no_grad():
        expected, expected_frames = reference.perception.preprocessor(input_signal=torch.from_numpy(batch), length=torch.from_numpy(lengths).long())
        got, frames = frontend(torch.from_numpy(batch), torch.from_numpy(lengths))
    assert torch.equal(frames, expected_frames)
    assert got.shape == expected.shape
    diff = (got - expected).abs().max().item()
    print(f"front end vs NeMo AudioToMelSpectrogramPreprocessor: max abs diff {diff:.2e} (features ~N(0,1))")
    assert diff < 5e-4


def test_graph_is_tensorrt_friendly(encoder_onnx):
    graph = onnx.load(str(encoder_onnx), load_external_data=False).graph
    ops = {node.op_type for node in graph.node}
    assert not ops & {"STFT", "DFT", "MelWeightMatrix", "Loop", "If"}, ops
    frontend_nodes = [n for n in graph.node if n.name.startswith("/frontend/")]
    assert any(n.op_type == "Conv" for n in frontend_nodes)  # the DFT, pinned to FP32 by this prefix
    assert any(n.op_type == "LayerNormalization" for n in graph.node)
    assert [i.name for i in graph.input] == ["WAV", "WAV_LENS"]
    assert [o.name for o in graph.output] == ["audio_embeddings", "audio_lengths"]
    assert (encoder_onnx.parent / "encoder.onnx.data").is_file()


@pytest.mark.parametrize("case", CASES)
def test_embeddings_and_tokens_match_the_reference(case, session, reference, clips):
    waveforms = [clips[name] for name in CASES[case]]
    batch, lengths = _batch(waveforms)
    embeddings, emb_lengths = session.run(None, {"WAV": batch, "WAV_LENS": lengths})
    expected = reference.embed_audio(waveforms)
    assert emb_lengths.dtype == np.int32 and emb_lengths.tolist() == [e.shape[0] for e in expected]
    ours = [torch.from_numpy(embeddings[i, :n]) for i, n in enumerate(emb_lengths)]
    diff = max((a - b).abs().max().item() for a, b in zip(ours, expected))
    print(f"{case}: encoder ONNX vs reference max abs diff {diff:.2e}")
    assert diff < 1e-4
    prompt = asr_prompt_ids(reference.tokenizer)
    assert reference.generate(ours, prompt, 24) == reference.generate(expected, prompt, 24)


def test_encode_gives_each_clip_its_own_embeddings(session, clips):
    """encoding.encode (the ONNX pipeline's and the CPU flavour's encoder): a clip's embeddings are bit-equal
    whatever clips share its call (each runs alone: no padding, no batch-wide int8 activation scales)."""
    names = CASES["mixed batch"]
    together = encode(session, [clips[name] for name in names])
    assert all(np.array_equal(got, encode(session, [clips[name]])[0]) for name, got in zip(names, together))
