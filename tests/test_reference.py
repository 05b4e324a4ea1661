"""The PyTorch reference is NeMo: same tokens as NeMo's own SALM, batch-independent, exact lengths."""

import pytest
import torch

from canary_trt.contract import audio_rows
from canary_trt.tokenizer import asr_prompt_ids
from canary_trt.transcribe import transcribe

pytestmark = pytest.mark.slow  # NeMo and the PyTorch reference

MAX_NEW = 24
ORDER = ["1s", "0880", "0930", "0890", "0920", "0870", "35s"]  # 1 s .. ~35 s


def test_embedding_lengths_follow_the_formulas(reference, clips):
    """docs/MODEL.md#frame-arithmetic: L = floor(N / 160) mel frames, then floor((L + 2 - 3) / 2) + 1 three times."""
    waveforms = [clips[name] for name in ORDER]
    embeddings = reference.embed_audio(waveforms)
    for name, wav, emb in zip(ORDER, waveforms, embeddings):
        assert emb.shape == (audio_rows(len(wav)), 128), name
    assert embeddings[0].shape[0] == 13 and embeddings[-1].shape[0] > 430  # 1 s -> 13, ~35 s -> ~435


def test_batch_equals_one_clip_at_a_time(reference, clips):
    waveforms = [clips[name] for name in ORDER]
    batched = transcribe(reference, waveforms, batch_size=len(waveforms), max_new_tokens=MAX_NEW)
    for name, wav, together in zip(ORDER, waveforms, batched):
        (alone,) = transcribe(reference, [wav], batch_size=1, max_new_tokens=MAX_NEW)
        assert alone.token_ids == together.token_ids, name
        assert alone.text == together.text
    # random weights, yet the audio drives the output: clips do not all produce the same tokens
    assert len({tuple(t.token_ids) for t in batched}) == len(ORDER)


def test_frontend_uses_the_stored_bf16_buffers(reference, tiny_checkpoint):
    stored = tiny_checkpoint.read_weights()
    featurizer = reference.perception.preprocessor.featurizer
    for name in ("fb", "window"):
        assert torch.equal(getattr(featurizer, name), stored[f"perception.preprocessor.featurizer.{name}"].float())


def test_same_tokens_as_nemo_salm(reference, tiny_checkpoint, clips, monkeypatch):
    """NeMo's own SALM.from_pretrained + SALM.generate on the same checkpoint: token-exact."""
    from nemo.collections.speechlm2.models import SALM

    monkeypatch.chdir(tiny_checkpoint.path)  # NeMo resolves a relative pretrained_llm against the cwd
    salm = SALM.from_pretrained(str(tiny_checkpoint.path)).eval()
    assert torch.equal(salm.perception.proj.weight, reference.perception.proj.weight)  # weights really loaded

    waveforms = [clips[name] for name in ORDER]
    lengths = torch.tensor([len(w) for w in waveforms])
    audio = torch.zeros(len(waveforms), int(lengths.max()))
    for i, w in enumerate(waveforms):
        audio[i, : len(w)] = torch.from_numpy(w)
    prompt = asr_prompt_ids(reference.tokenizer)
    with torch.inference_mode():
        nemo = salm.generate(prompts=torch.tensor([prompt] * len(waveforms)), audios=audio, audio_lens=lengths, max_new_tokens=MAX_NEW)
    ours = reference.generate(reference.embed_audio(waveforms), prompt, MAX_NEW)
    for name, expected, got in zip(ORDER, nemo.tolist(), ours):
        expected = expected[: expected.index(reference.eos_id)] if reference.eos_id in expected else expected
        assert got == expected, name


def test_bf16_runs(tiny_checkpoint, clips):
    from canary_trt.reference import Reference

    (result,) = transcribe(Reference(tiny_checkpoint, dtype="bf16"), [clips["0880"]], max_new_tokens=8)
    assert len(result.token_ids) == 8 and result.audio_seconds == 2.99
