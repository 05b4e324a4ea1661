"""The comparisons, as functions of (server URL, references): any canary-trt Triton server, either flavour.

Encoder (the `encoder` model called directly, one clip per request, each checked on its own):
rows equal, every value finite, cosine similarity of the whole output >= ENCODER_MIN_COSINE, of the worst
single row >= ENCODER_MIN_ROW_COSINE, max |diff| <= ENCODER_MAX_ABS_FRACTION of the reference's largest
|value|. One more request sends the 1 s clip zero-padded to 20 s (as the GPU flavour's length buckets
do): the padding must not change the output.

Tokens (the public `canary_qwen` ensemble, default prompt, the recorded MAX_NEW_TOKENS): the policy follows
the server's decoder. A python decoder (the CPU flavour: ONNX Runtime fp32, the reference itself) must give
identical tokens. A tensorrtllm decoder runs FP16, and FP16 rounding may flip a near-tie of the random
model: the tokens must agree up to the first divergence, and there the reference's two best logits must be
closer than NEAR_TIE_LOGITS (after a divergence the two continue from different text: not comparable).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .references import References, TokenReference
from .triton_http import Output, TritonHttp, TritonHttpError

from ..contract import ENSEMBLE, INPUT_MAX_NEW_TOKENS, INPUT_WAV, INPUT_WAV_LENS, OUTPUT_TOKEN_IDS, OUTPUT_TRANSCRIPT

ENCODER_MIN_COSINE = 0.999
ENCODER_MIN_ROW_COSINE = 0.99
ENCODER_MAX_ABS_FRACTION = 0.05
# The random tiny model's logits lie within about +-1.5 (one FP16 step near 1 is 0.001) and its top-2 gaps
# are small (0.001 to 0.4). Its FP16 weights moved the top-2 gap by at most 0.0035 along the reference
# paths (transformers, CPU, FP16 vs FP32). A gap under 0.03, about ten times that, is a decision FP16 may
# legitimately flip; a larger one flipped is a fault.
NEAR_TIE_LOGITS = 0.03
PADDED_SECONDS = 20.0


@dataclass(frozen=True)
class Check:
    name: str  # "encoder 40 s", "canary_qwen 0870", "tensorrt"
    ok: bool
    detail: str  # what was measured
    failure: str = ""  # why it failed, with the threshold named

    def line(self) -> str:
        status = "ok  " if self.ok else "FAIL"
        return f"  {status} {self.name:<34} {self.detail}{'' if self.ok else '  <- ' + self.failure}"

    @property
    def message(self) -> str:
        return f"{self.name}: {self.failure}"


def encoder_checks(client: TritonHttp, references: References) -> list[Check]:
    checks = []
    for ref in references.encoder:
        samples, expected = references.load(ref.audio), references.load(ref.embeddings)
        checks.append(_encoder_check(client, f"encoder {ref.seconds:g} s", samples, len(samples), expected))
    shortest = min(references.encoder, key=lambda r: r.seconds, default=None)
    if shortest is not None and shortest.seconds < PADDED_SECONDS:
        samples = references.load(shortest.audio)
        padded = np.zeros(round(PADDED_SECONDS * len(samples) / shortest.seconds), np.float32)
        padded[: len(samples)] = samples
        name = f"encoder {shortest.seconds:g} s padded to {PADDED_SECONDS:g} s"
        checks.append(_encoder_check(client, name, padded, len(samples), references.load(shortest.embeddings)))
    return checks


def _encoder_check(client: TritonHttp, name: str, wav: np.ndarray, length: int, expected: np.ndarray) -> Check:
    try:
        inputs = {INPUT_WAV: wav[None].astype(np.float32), INPUT_WAV_LENS: np.array([[length]], np.int32)}
        out = client.infer("encoder", inputs, [Output("audio_embeddings"), Output("audio_lengths")])
    except TritonHttpError as e:
        return Check(name, False, "no answer", f"request failed: {e}")
    rows = int(out["audio_lengths"].reshape(-1)[0])
    got = out["audio_embeddings"].reshape(-1, expected.shape[-1])[:rows].astype(np.float64)
    return compare_embeddings(name, got, expected.astype(np.float64))


def compare_embeddings(name: str, got: np.ndarray, expected: np.ndarray) -> Check:
    if got.shape != expected.shape:
        shape = f"rows x width {list(got.shape)}"
        return Check(name, False, shape, f"{shape} != reference {list(expected.shape)}")
    if not np.isfinite(got).all():
        return Check(name, False, f"{int((~np.isfinite(got)).sum())} non-finite values", "NaN/Inf in the output")
    diff = float(np.abs(got - expected).max())
    cosine = _cosine(got.ravel(), expected.ravel())
    row_cosines = [_cosine(a, b) for a, b in zip(got, expected)]
    worst, worst_row = min(row_cosines), int(np.argmin(row_cosines))
    limit = ENCODER_MAX_ABS_FRACTION * float(np.abs(expected).max())
    detail = f"rows {len(got)}, max abs diff {diff:.2e}, cosine {cosine:.6f}, worst row {worst_row} {worst:.6f}"
    if cosine < ENCODER_MIN_COSINE:
        return Check(name, False, detail, f"cosine {cosine:.5g} < {ENCODER_MIN_COSINE}")
    if worst < ENCODER_MIN_ROW_COSINE:
        return Check(name, False, detail, f"row {worst_row} cosine {worst:.5g} < {ENCODER_MIN_ROW_COSINE}")
    if diff > limit:
        return Check(name, False, detail, f"max abs diff {diff:.3g} > {limit:.3g} ({ENCODER_MAX_ABS_FRACTION:g} x the "
                                          "reference's largest |value|)")  # fmt: skip
    return Check(name, True, detail)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(a @ b) / norms


@dataclass(frozen=True)
class TokenPolicy:
    exact: bool
    reason: str  # for the report

    def describe(self) -> str:
        if self.exact:
            return f"{self.reason}: tokens must be identical"
        return (f"{self.reason}: tokens must agree up to a first divergence at a near-tie of the reference "
                f"(top-2 logit gap < {NEAR_TIE_LOGITS})")  # fmt: skip


def token_policy(client: TritonHttp, exact: bool | None = None) -> TokenPolicy:
    """From the server's decoder: python = the fp32 ONNX Runtime decoder, tensorrtllm = FP16 engine."""
    config = client.model_config("decoder")
    backend = config.get("backend") or config.get("platform") or "unknown"
    if exact is not None:
        return TokenPolicy(exact, f"decoder backend {backend}, policy set by --exact")
    if backend == "python":
        return TokenPolicy(True, "decoder backend python (ONNX Runtime fp32, as the reference)")
    return TokenPolicy(False, f"decoder backend {backend} (FP16)")


def token_checks(client: TritonHttp, references: References, policy: TokenPolicy) -> list[Check]:
    return [_token_check(client, references, ref, policy) for ref in references.transcribe]


def _token_check(client: TritonHttp, references: References, ref: TokenReference, policy: TokenPolicy) -> Check:
    name = f"canary_qwen {ref.name}"
    wav = references.load(ref.audio)
    inputs = {INPUT_WAV: wav[None].astype(np.float32), INPUT_WAV_LENS: np.array([[len(wav)]], np.int32),
              INPUT_MAX_NEW_TOKENS: np.array([[references.max_new_tokens]], np.int32)}  # fmt: skip
    try:
        out = client.infer(ENSEMBLE, inputs, [Output(OUTPUT_TOKEN_IDS), Output(OUTPUT_TRANSCRIPT, binary=False)])
    except TritonHttpError as e:
        return Check(name, False, "no answer", f"request failed: {e}")
    return compare_tokens(name, out[OUTPUT_TOKEN_IDS].reshape(-1).tolist(), ref, policy)


def compare_tokens(name: str, got: list[int], ref: TokenReference, policy: TokenPolicy) -> Check:
    want = ref.token_ids
    if got == want:
        return Check(name, True, f"{len(want)}/{len(want)} tokens identical")
    at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    server = got[at] if at < len(got) else "<|im_end|>"
    reference = want[at] if at < len(want) else "<|im_end|>"
    margin = ref.margins[at] if at < len(ref.margins) else None
    gap = f"reference top-2 gap {margin:.3g}" if margin is not None else "no recorded gap"
    detail = f"first divergence at token {at} of {len(want)}: server {server}, reference {reference} ({gap})"
    if policy.exact:
        return Check(name, False, detail, f"token {at} differs: server {server}, ONNX Runtime {reference}")
    if margin is not None and margin < NEAR_TIE_LOGITS:
        return Check(name, True, detail + f", a near-tie (< {NEAR_TIE_LOGITS}): accepted")
    why = f"its top-2 gap {margin:.3g} >= {NEAR_TIE_LOGITS}, no near-tie" if margin is not None else gap
    return Check(name, False, detail, f"token {at} differs: server {server}, ONNX Runtime {reference} ({why})")
