"""`canary-trt gpu-check prepare`: stage 1, in the CPU image (NeMo, PyTorch, ONNX Runtime).

A random tiny checkpoint, its GPU build's `prepare` stage, its CPU fp32 build, and ONNX Runtime references
from that CPU build: greedy tokens (with top-2 logit margins) for a few speech clips, and encoder outputs
for 1 s / 20 s / 40 s clips. Layout: references.py.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import InvalidInput
from .clips import Clip, encoder_clips, transcribe_clips
from .references import DATA_DIR, EncoderReference, References, TokenReference

CHECKPOINT_DIR, GPU_BUILD, CPU_BUILD = "checkpoint", "gpu", "cpu"
MAX_NEW_TOKENS = 24  # enough tokens to see a divergence, few enough to keep the check quick


def prepare(out: str | Path, preset: str = "h100", seed: int = 0, max_new_tokens: int = MAX_NEW_TOKENS,
            log=print) -> References:  # fmt: skip
    from ..export.build import export
    from ..export.presets import get_preset
    from ..random_checkpoint import write_random_checkpoint

    get_preset(preset)  # an unknown preset fails now, not after the exports
    if max_new_tokens < 1:
        raise InvalidInput(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    out = Path(out).resolve()
    quiet = lambda line: log("    " + line.splitlines()[0])  # noqa: E731  (step titles only)
    log(f"== random tiny checkpoint (seed {seed}) -> {out / CHECKPOINT_DIR}")
    checkpoint = _timed(log, lambda: write_random_checkpoint(out / CHECKPOINT_DIR, "tiny", seed))
    log(f"== export --target gpu --stage prepare --preset {preset} -> {out / GPU_BUILD}")
    _timed(log, lambda: export(checkpoint.path, out / GPU_BUILD, "gpu", preset=preset, stage="prepare", log=quiet))
    log(f"== export --target cpu (fp32, the ONNX Runtime reference) -> {out / CPU_BUILD}")
    _timed(log, lambda: export(checkpoint.path, out / CPU_BUILD, "cpu", log=quiet))
    log("== ONNX Runtime references")
    references = _timed(log, lambda: record_references(out, preset, max_new_tokens))
    path = references.save()
    log(f"references written to {path}: {len(references.transcribe)} clips for canary_qwen, "
        f"{len(references.encoder)} for the encoder")  # fmt: skip
    return references


def record_references(out: Path, preset: str, max_new_tokens: int) -> References:
    import onnxruntime as ort

    from ..onnx_pipeline import OnnxPipeline

    pipeline = OnnxPipeline(out / CPU_BUILD)
    (out / DATA_DIR).mkdir(parents=True, exist_ok=True)
    transcribe = [_token_reference(pipeline, clip, out, max_new_tokens) for clip in transcribe_clips()]
    encoder = [_encoder_reference(pipeline, clip, out) for clip in encoder_clips()]
    created = {"canary_trt": __version__, "onnxruntime": ort.__version__, "python": platform.python_version(),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    return References(out, preset, max_new_tokens, transcribe, encoder, created)


def _token_reference(pipeline, clip: Clip, out: Path, max_new_tokens: int) -> TokenReference:
    from ..tokenizer import DEFAULT_INSTRUCTION, asr_prompt_ids, decode

    # The exact path: the CPU flavour hands its fp32 decoder the FP32 table unchanged (repository.py
    # PROMPT_TABLE_TYPE), so its tokens must equal these; the GPU engine's FP16 table is one more FP16
    # rounding, within the near-tie policy (checks.py).
    (table,) = pipeline.embed_audio([clip.samples])
    prompt = asr_prompt_ids(pipeline.tokenizer, DEFAULT_INSTRUCTION)
    tokens, margins = greedy_with_margins(pipeline, table, prompt, max_new_tokens)
    (served,) = pipeline.generate([table], prompt, max_new_tokens)  # the production loop must agree
    if served != tokens:
        raise RuntimeError(f"clip {clip.name}: the margin loop decoded {tokens}, the pipeline {served}")
    audio = _save(out, f"transcribe-{clip.name}", clip.samples)
    return TokenReference(clip.name, clip.source, round(clip.seconds, 3), audio, tokens, margins,
                          decode(pipeline.tokenizer, tokens))  # fmt: skip


def greedy_with_margins(pipeline, table: np.ndarray, prompt_ids: list[int],
                        max_new_tokens: int) -> tuple[list[int], list[float]]:  # fmt: skip
    """Greedy decoding of one clip, as decoding.GreedyDecoder does it, also keeping each step's top-2 gap."""
    from ..decoding import Request, splice_fake_ids

    decoder = pipeline.decoder
    ids = splice_fake_ids(prompt_ids, pipeline.placeholder_id, len(table), pipeline.vocab_size)
    embeds = decoder.embed(Request(ids, table, max_new_tokens, pipeline.eos_id))[None]
    mask = np.ones((1, embeds.shape[1]), np.int64)
    positions = np.arange(embeds.shape[1], dtype=np.int64)[None]
    cache = [np.zeros((1, decoder.kv_heads, 0, decoder.head_dim), np.float32)] * (2 * decoder.num_layers)
    tokens: list[int] = []
    margins: list[float] = []
    while True:
        feeds = dict(zip(decoder.input_names, (embeds, mask, positions, *cache)))
        logits, *cache = decoder.session.run(decoder.output_names, feeds)
        top2 = np.sort(logits[0])[-2:]
        margins.append(float(top2[1] - top2[0]))
        token = int(logits[0].argmax())
        if token == pipeline.eos_id:
            return tokens, margins
        tokens.append(token)
        if len(tokens) == max_new_tokens:
            return tokens, margins
        embeds = decoder.embeddings[[token]][None].astype(np.float32)
        mask = np.ones((1, mask.shape[1] + 1), np.int64)
        positions = positions[:, -1:] + 1


def _encoder_reference(pipeline, clip: Clip, out: Path) -> EncoderReference:
    (embeddings,) = pipeline.embed_audio([clip.samples])
    audio = _save(out, f"encoder-{clip.name}", clip.samples)
    saved = _save(out, f"encoder-{clip.name}-embeddings", embeddings)
    return EncoderReference(clip.name, clip.source, round(clip.seconds, 3), audio, saved, len(embeddings))


def _save(out: Path, stem: str, array: np.ndarray) -> str:
    relative = f"{DATA_DIR}/{stem}.npy"
    np.save(out / relative, np.ascontiguousarray(array, dtype=np.float32))
    return relative


def _timed(log, action):
    start = time.perf_counter()
    result = action()
    log(f"    done in {time.perf_counter() - start:.1f} s")
    return result
