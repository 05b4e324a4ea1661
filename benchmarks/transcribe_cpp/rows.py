"""transcribe.cpp's rows of compare_backends.py (`--backends tcpp`), timed in a child process.

The child runs in the separate venv that setup.sh made (transcribe-cpp's Python bindings) against the
patched 32-token libtranscribe.so (TRANSCRIBE_LIBRARY), so the project venv never imports transcribe.cpp,
and the model is freed when the child exits (compare_backends.py's "one model in memory at a time").
Paths come from the `setup.json` that setup.sh writes into its output directory.

Timing as compare_backends.timed(): one untimed warm-up pass over all clips, then one timed pass; model load
excluded. A pass = the clips in chunks of `batch`: Session.run_batch (one batched prefill + step loop per
chunk; the encoder runs clip by clip) for batch > 1, Session.run per clip for batch 1.

Token counts: the canary_qwen path exposes no token ids (Result.tokens is empty). A clip that hit the cap
raises OutputTruncated, so its count is exactly the cap; one that stopped at <|im_end|> first is counted as
the re-tokenized length of its text and flagged as an estimate. The library's cap is read back from
Session.limits and must equal `tokens`, so an unpatched (256-token) library cannot pass as a 32-token one.

Standalone, in the transcribe.cpp venv:
    build/tcpp-venv/bin/python benchmarks/transcribe_cpp/rows.py --tcpp-dir build/tcpp --quant F16 \\
        --batch 5 [--tokens 32] [--threads 2] [--clips 1] [--no-warmup]
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")  # standalone default: canary_trt.contract.LIBRIVOX_DIR
PROMPT_OVERHEAD = 32  # canary_qwen's k_prompt_overhead (src/arch/canary_qwen/model.cpp)
MS_PER_AUDIO_TOKEN = 8 * 160 * 1000 / 16000  # encoder subsampling 8 x hop 160 at 16 kHz


def read_setup(tcpp_dir: Path) -> dict:
    """setup.sh's record of the venv, the patched library and the GGUFs."""
    path = Path(tcpp_dir) / "setup.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run benchmarks/transcribe_cpp/setup.sh --out {tcpp_dir} CHECKPOINT first")
    return json.loads(path.read_text())


# --- the parent: runs in the project venv (compare_backends.py) -----------------------------------------


def timed_pass(tcpp_dir: Path, quant: str, waveforms: list, batch: int, tokens: int, threads: int, *,
               warmup: bool = True, timeout: float = 3600) -> dict:
    """The child's result for one row: wall_s (the warm pass), tokens and estimated (per clip), texts, cap,
    version, library, gguf. Raises RuntimeError with the child's stderr if it fails."""
    import numpy as np

    setup = read_setup(tcpp_dir)
    with tempfile.TemporaryDirectory() as tmp:
        clips = Path(tmp) / "clips.npz"
        np.savez(clips, *[np.asarray(w, dtype=np.float32) for w in waveforms])
        cmd = [setup["python"], str(Path(__file__).resolve()), "--tcpp-dir", str(tcpp_dir), "--quant", quant,
               "--npz", str(clips), "--batch", str(batch), "--tokens", str(tokens), "--threads", str(threads)]
        done = subprocess.run(cmd + ([] if warmup else ["--no-warmup"]), capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"transcribe.cpp {quant} batch {batch} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the child: runs in the transcribe.cpp venv -----------------------------------------------------------


def library_cap(session) -> int:
    """New-token cap compiled into the library: effective_max_audio_ms = (n_ctx - overhead - cap) * 80 ms."""
    limits = session.limits  # a property
    return round(limits.effective_n_ctx - PROMPT_OVERHEAD - limits.effective_max_audio_ms / MS_PER_AUDIO_TOKEN)


def measure(gguf: str, waveforms: list, batch: int, tokens: int, threads: int, warmup: bool = True) -> dict:
    import transcribe_cpp as tc

    model = tc.Model(gguf, backend="cpu")
    session = model.session(n_threads=threads)
    if (cap := library_cap(session)) != tokens:
        raise SystemExit(f"{tc.library_path()} caps canary_qwen at {cap} new tokens, not {tokens}: "
                         f"run setup.sh --tokens {tokens}")  # fmt: skip

    def one(result) -> tuple[int, bool, str]:  # (new tokens, estimated?, text)
        if isinstance(result, tc.OutputTruncated):  # hit the cap: exactly `tokens`
            return tokens, False, result.partial_result.raw_text if result.partial_result else ""
        if isinstance(result, Exception):
            raise result
        return len(model.tokenize(result.raw_text)), True, result.raw_text  # stopped at <|im_end|>

    def run() -> list[tuple[int, bool, str]]:
        out = []
        for start in range(0, len(waveforms), batch):
            chunk = waveforms[start : start + batch]
            if batch == 1:
                try:
                    out.append(one(session.run(chunk[0])))
                except tc.OutputTruncated as exc:
                    out.append(one(exc))
            else:
                out += [one(r) for r in session.run_batch(chunk, return_exceptions=True)]
        return out

    if warmup:
        run()  # warm-up pass, excluded
    start = time.perf_counter()
    results = run()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "tokens": [n for n, _, _ in results], "estimated": [e for _, e, _ in results],
            "texts": [t for _, _, t in results], "cap": cap, "library": str(tc.library_path()),
            "version": tc.native_version(), "batch": batch, "threads": threads, "gguf": gguf,
            "audio_s": sum(len(w) for w in waveforms) / 16000}  # fmt: skip


def load_wav(path):
    import wave

    import numpy as np

    with wave.open(str(path)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (16000, 1, 2):
            raise SystemExit(f"{path}: want 16 kHz mono s16")
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0


def main() -> None:
    import argparse

    import numpy as np

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tcpp-dir", type=Path, required=True, help="setup.sh's --out")
    p.add_argument("--quant", default="F16", help="which of setup.json's GGUFs")
    p.add_argument("--npz", help="waveforms (float32, 16 kHz) as arr_0, arr_1, ...; default: the LibriVox clips")
    p.add_argument("--clips", type=int, default=0, help="only the first N clips (0: all)")
    p.add_argument("--batch", type=int, default=5)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-warmup", action="store_true")
    args = p.parse_args()
    setup = read_setup(args.tcpp_dir)
    os.environ["TRANSCRIBE_LIBRARY"] = setup["library"]  # read when transcribe_cpp is imported (in measure)
    if args.npz:
        with np.load(args.npz) as z:
            waveforms = [z[f"arr_{i}"] for i in range(len(z.files))]
    else:
        waveforms = [load_wav(f) for f in sorted(LIBRIVOX.glob("*.wav"))]
    if args.clips:
        waveforms = waveforms[: args.clips]
    out = measure(setup["gguf"][args.quant], waveforms, args.batch, args.tokens, args.threads, not args.no_warmup)
    print(json.dumps(out, ensure_ascii=True))


if __name__ == "__main__":
    main()
