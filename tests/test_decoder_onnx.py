"""The ONNX decoder and its numpy greedy loop against the PyTorch reference: same logits, same tokens."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from canary_trt.decoding import GreedyDecoder, Request, input_names, splice_fake_ids
from canary_trt.contract import DECODER_INT4_ONNX, DECODER_INT8_ONNX, DECODER_ONNX, EMBEDDINGS
from canary_trt.export.decoder_onnx import DATA_NAME, export_decoder_onnx
from canary_trt.export.quantize import quantize_decoder
from canary_trt.tokenizer import asr_prompt_ids

pytestmark = pytest.mark.slow  # exports through PyTorch

MAX_NEW = 24
NAMES = ["1s", "0880", "0870", "35s"]  # 1 s .. 35 s: prompts of 27 .. ~450 positions


@pytest.fixture(scope="module")
def export_dir(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("decoder")
    assert export_decoder_onnx(tiny_checkpoint, out) == out / DECODER_ONNX
    assert (out / DATA_NAME).is_file()  # external data, as the full-size model needs
    return out


@pytest.fixture(scope="module")
def decoder(export_dir):
    return GreedyDecoder(export_dir / DECODER_ONNX, export_dir / EMBEDDINGS)


@pytest.fixture(scope="module")
def audio(reference, clips):
    embeddings = reference.embed_audio([clips[name] for name in NAMES])
    return {name: e.numpy() for name, e in zip(NAMES, embeddings)}


@pytest.fixture(scope="module")
def prompt(reference):
    return asr_prompt_ids(reference.tokenizer)


@pytest.fixture(scope="module")
def expected(reference, audio, prompt):
    """The reference's tokens for each clip decoded alone."""
    return {name: reference.generate([torch.from_numpy(audio[name])], prompt, MAX_NEW)[0] for name in NAMES}


@pytest.fixture(scope="module")
def make_request(reference, audio, prompt, decoder):
    def make(name, max_new_tokens=MAX_NEW, end_id=reference.eos_id):
        ids = splice_fake_ids(prompt, reference.placeholder_id, len(audio[name]), decoder.vocab_size)
        return Request(ids, audio[name], max_new_tokens, end_id)

    return make


def test_splice_fake_ids():
    ids = splice_fake_ids([5, 9, 7], placeholder_id=9, n_audio_rows=3, vocab_size=100)
    assert ids.dtype == np.int32 and ids.tolist() == [5, 100, 101, 102, 7]
    for bad in ([5, 7], [9, 5, 9]):
        with pytest.raises(ValueError, match="exactly one placeholder"):
            splice_fake_ids(bad, 9, 3, 100)


def test_prefill_logits_match_transformers(decoder, reference, make_request):
    """One left-padded prefill of two clips: last-position logits and the cache against transformers."""
    prompts = [decoder.embed(make_request(name)) for name in ("1s", "0880")]
    width = max(len(p) for p in prompts)
    embeds = np.zeros((2, width, decoder.hidden), np.float32)
    mask = np.zeros((2, width), np.int64)
    for row, p in enumerate(prompts):
        embeds[row, width - len(p) :], mask[row, width - len(p) :] = p, 1
    positions = np.maximum(mask.cumsum(axis=1) - 1, 0)
    empty = np.zeros((2, decoder.kv_heads, 0, decoder.head_dim), np.float32)
    feeds = dict(zip(input_names(decoder.num_layers), [embeds, mask, positions] + [empty] * (2 * decoder.num_layers)))
    logits, *present = decoder.session.run(None, feeds)

    with torch.inference_mode():
        out = reference.llm(
            inputs_embeds=torch.from_numpy(embeds), attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions), use_cache=True,
        )  # fmt: skip
    diff = np.abs(logits - out.logits[:, -1].numpy()).max()
    # The last layer's values at real positions (padded rows hold whatever each runtime makes of them).
    values = present[-1], out.cache.layers[-1].values.numpy()
    value_diff = np.abs(values[0] - values[1]).transpose(0, 2, 1, 3)[mask == 1].max()
    print(f"\nprefill [2, {width}]: max |logits diff| {diff:.2e} (max |logit| {np.abs(logits).max():.2f}),", end=" ")
    print(f"last-layer values {value_diff:.2e}")
    assert logits.shape == (2, decoder.vocab_size) and values[0].shape == (2, decoder.kv_heads, width, decoder.head_dim)
    assert diff < 1e-4 and value_diff < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_greedy_matches_reference_one_clip(decoder, make_request, expected, name):
    assert decoder.generate([make_request(name)]) == [expected[name]]


def test_greedy_matches_reference_mixed_batch(decoder, make_request, expected):
    assert decoder.generate([make_request(name) for name in NAMES]) == [expected[name] for name in NAMES]
    assert len({tuple(expected[name]) for name in NAMES}) == len(NAMES)  # the audio drives the output


def test_batch_independence(decoder, make_request, prompt):
    alone = decoder.generate([make_request("0870")])
    text_only = Request(np.array(prompt[:3]), None, 7, end_id=-1)  # no prompt table, never stops early
    batch = [make_request("35s", 5), make_request("0870"), text_only, make_request("1s", 11)]
    together = decoder.generate(batch)
    assert together[1] == alone[0]
    assert together[2] == decoder.generate([text_only])[0] and len(together[2]) == 7
    assert len(together[0]) <= 5 and len(together[3]) <= 11


def test_the_cache_stays_in_onnx_runtime(decoder, make_request, monkeypatch):
    """Each prompt is prefilled on its own (batch 1, no past); every step binds the previous step's present
    OrtValues as its past, as they are; only joining (two prefills into one batch) and the step where a row
    leaves gather new ones (one numpy copy), and the remaining row decodes as it does alone."""
    steps = []
    run = decoder._run

    def spy(embeds, mask, positions, cache):
        logits, present = run(embeds, mask, positions, cache)
        steps.append((cache, present))
        return logits, present

    def reused(decode_steps):
        return [all(past is prev for past, prev in zip(cache, decode_steps[t - 1][1]))
                for t, (cache, _) in enumerate(decode_steps) if t]  # fmt: skip

    monkeypatch.setattr(decoder, "_run", spy)
    short, long = make_request("0880", 3, end_id=-1), make_request("1s", end_id=-1)  # -1: both run to their budget
    together = decoder.generate([short, long])
    prefills, decode = steps[:2], steps[2:]
    steps.clear()
    alone = decoder.generate([long])
    monkeypatch.undo()
    assert together[1] == alone[0] and len(decode) == MAX_NEW - 1
    assert all(c.shape()[0] == 1 and c.shape()[2] == 0 for past, _ in prefills for c in past)
    assert [c.shape()[0] for c in decode[0][0]] == [2] * 2 * decoder.num_layers  # the joined copy
    assert reused(decode) == [t != 2 for t in range(1, MAX_NEW - 1)]  # decode step 2: the short row has left
    assert [c.shape()[0] for c in decode[2][0]] == [1] * 2 * decoder.num_layers
    assert reused(steps) == [True] * (MAX_NEW - 1)  # alone: the prefill's cache is the first step's past


def test_stops_at_end_id(decoder, make_request, expected):
    tokens = expected["0880"]
    k = next(k for k in range(3, len(tokens)) if tokens[k] not in tokens[:k])  # first emission at step k
    assert decoder.generate([make_request("0880", end_id=tokens[k])]) == [tokens[:k]]
    assert decoder.generate([make_request("0880", max_new_tokens=0)]) == [[]]


@pytest.mark.parametrize("bits, file_name", [(8, DECODER_INT8_ONNX), (4, DECODER_INT4_ONNX)])
def test_quantized_variant_runs(bits, file_name, export_dir, decoder, make_request):
    path = quantize_decoder(export_dir / DECODER_ONNX, export_dir / file_name, bits)
    assert path.with_name(path.name + ".data").is_file()
    quantized_decoder = GreedyDecoder(path, export_dir / EMBEDDINGS)
    requests = [make_request(name, end_id=-1) for name in NAMES]  # -1: never emitted, so all run MAX_NEW steps
    quantized, exact = quantized_decoder.generate(requests), decoder.generate(requests)
    assert all(len(ids) == MAX_NEW for ids in quantized)
    agreement = np.mean([a == b for q, e in zip(quantized, exact) for a, b in zip(q, e)])
    print(f"\n{bits}-bit vs fp32 token agreement (random weights, free-running): {agreement:.0%}")


def test_runtime_does_not_import_torch():
    code = "import sys, canary_trt.decoding; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
