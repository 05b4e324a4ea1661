"""Benchmark a canary-trt Triton server over gRPC: WER, RTFx, latency and Triton's own statistics.

Method (as Triton-ASR-Client and the Open ASR Leaderboard): every clip is decoded on the client first,
so timing covers the server only. Then, for each concurrency level: a warm-up of N requests (not
counted), Triton's cumulative statistics read, one timed pass over the whole set with that many requests
in flight, statistics read again; the pass's share is the difference. RTFx = audio seconds of the clips
transcribed / wall seconds from the first send to the last reply. `run_benchmark` returns the report as
plain JSON-ready data; `report.py` renders it.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE, duration, load_audio
from .api import MODEL, AsyncTranscriptionClient, Transcription
from .manifest import Utterance
from .metrics import NORMALIZER, PERCENTILE_METHOD, WordErrors, corpus_errors, percentiles, rtfx, word_errors

SCHEMA = "canary-trt-bench/1"
DEFAULT_WARMUP = 8
TRITON_DURATIONS = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class Clip:
    index: int
    utterance: Utterance
    samples: np.ndarray | None  # None: the audio could not be read
    error: str | None = None


def run_benchmark(
    url: str,
    utterances: list[Utterance],
    concurrency: list[int],
    warmup: int = DEFAULT_WARMUP,
    max_new_tokens: int | None = None,
    source: str = "",
    model: str = MODEL,
) -> dict:
    if not utterances:
        raise ValueError("nothing to benchmark: the data set is empty")
    if not concurrency or min(concurrency) < 1 or warmup < 0:
        raise ValueError("concurrency levels must be at least 1 and --warmup at least 0")
    clips = decode(utterances)
    return asyncio.run(_benchmark(url, clips, concurrency, warmup, max_new_tokens, source, model))


def decode(utterances: list[Utterance]) -> list[Clip]:
    """Every clip to 16 kHz mono up front; one that cannot be read fails in every pass, with its reason."""
    from tqdm import tqdm

    clips = []
    for index, u in enumerate(tqdm(utterances, desc="decoding audio", unit="clip", disable=None)):
        try:
            clips.append(Clip(index, u, load_audio(u.audio)))
        except (OSError, ValueError) as e:  # AudioError is a ValueError; unreadable files are OSErrors
            clips.append(Clip(index, u, None, str(e)))
    return clips


async def _benchmark(url, clips, levels, warmup, max_new_tokens, source, model) -> dict:
    started = datetime.datetime.now(datetime.timezone.utc)
    async with AsyncTranscriptionClient(url, model) as control:  # metadata and statistics only
        server = await describe_server(control, url)
        passes = []
        for level in levels:
            async with AsyncTranscriptionClient(url, model, concurrency=level) as client:
                await _warm_up(client, clips, warmup, max_new_tokens)
                before = await control.triton.get_inference_statistics(as_json=True)
                wall, outcomes = await _timed_pass(client, clips, max_new_tokens, f"concurrency {level}")
                after = await control.triton.get_inference_statistics(as_json=True)
            passes.append(summarize_pass(level, warmup, wall, clips, outcomes, statistics_delta(before, after)))
    readable = [c for c in clips if c.samples is not None]
    return {
        "schema": SCHEMA,
        "started": started.isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "server": server,
        "dataset": {
            "source": source,
            "utterances": len(clips),
            "audio_seconds": round(sum(duration(c.samples) for c in readable), 3),
            "unreadable": len(clips) - len(readable),
        },
        "method": {
            "concurrency": list(levels),
            "warmup_requests": warmup,
            "max_new_tokens": max_new_tokens,  # None: the server's default
            "wer": f"corpus level: total errors / total reference words of the transcribed clips; both sides "
            f"normalized by {NORMALIZER}, aligned by jiwer",
            "rtfx": "audio seconds of the transcribed clips / wall seconds from the first send to the last reply",
            "latency": "per request, send -> reply, seconds",
            "percentiles": PERCENTILE_METHOD,
            "triton": "get_inference_statistics after minus before the timed pass; ms are per request "
            "(ns / count); batch_size_histogram counts executions per batch size",
        },
        "passes": passes,
    }


async def _warm_up(client, clips, requests, max_new_tokens) -> None:
    """The first `requests` readable clips (repeated if the set is smaller); failures here are ignored:
    the timed pass reports them."""
    readable = [c.samples for c in clips if c.samples is not None]
    if readable and requests:
        warm = [readable[i % len(readable)] for i in range(requests)]
        await client.transcribe_many(warm, sample_rate=SAMPLE_RATE, max_new_tokens=max_new_tokens,
                                     return_exceptions=True)  # fmt: skip


async def _timed_pass(client, clips, max_new_tokens, label) -> tuple[float, list[Transcription | str]]:
    """One request per readable clip, all queued at once (the client bounds those in flight).
    Returns the wall time and, per clip, its transcription or the reason it failed."""
    from tqdm import tqdm

    readable = [c for c in clips if c.samples is not None]
    with tqdm(total=len(readable), desc=label, unit="clip", disable=None) as progress:

        async def one(clip: Clip):
            try:
                return await client.transcribe(clip.samples, sample_rate=SAMPLE_RATE, max_new_tokens=max_new_tokens)
            except Exception as e:  # a server error or timeout fails this clip, not the pass
                return f"{type(e).__name__}: {e}"
            finally:
                progress.update()

        start = time.perf_counter()
        results = await asyncio.gather(*(one(c) for c in readable))
        wall = time.perf_counter() - start
    by_index = {c.index: r for c, r in zip(readable, results)}
    return wall, [by_index.get(c.index, c.error) for c in clips]


def summarize_pass(level, warmup, wall, clips, outcomes, triton) -> dict:
    done = [(clip, outcome) for clip, outcome in zip(clips, outcomes) if isinstance(outcome, Transcription)]
    errors = {clip.index: word_errors(clip.utterance.text, outcome.text) for clip, outcome in done}
    audio_seconds = sum(outcome.audio_seconds for _, outcome in done)
    latencies = [outcome.latency_seconds for _, outcome in done]
    corpus = corpus_errors(list(errors.values()))
    return {
        "concurrency": level,
        "warmup_requests": warmup,
        "done": len(done),
        "failed": len(clips) - len(done),
        "wall_seconds": round(wall, 4),
        "audio_seconds": round(audio_seconds, 3),
        "rtfx": round(rtfx(audio_seconds, wall), 3),
        "latency_seconds": {
            **{k: _round(v) for k, v in percentiles(latencies).items()},
            "mean": _round(float(np.mean(latencies)) if latencies else None),
            "max": _round(max(latencies, default=None)),
        },
        "wer": {"wer": corpus.wer, **_errors_dict(corpus)},
        "triton": triton,
        "utterances": [_utterance_row(c, o, errors.get(c.index)) for c, o in zip(clips, outcomes)],
    }


def _utterance_row(clip: Clip, outcome: Transcription | str, errors: WordErrors | None) -> dict:
    row = {"index": clip.index, "audio": str(clip.utterance.audio), "reference": clip.utterance.text}
    if isinstance(outcome, Transcription):
        return {
            **row, "status": "done", "error": None, "hypothesis": outcome.text,
            "audio_seconds": round(outcome.audio_seconds, 3), "latency_seconds": _round(outcome.latency_seconds),
            "generated_tokens": len(outcome.token_ids), "word_errors": _errors_dict(errors),
        }  # fmt: skip
    return {**row, "status": "failed", "error": outcome, "hypothesis": None, "audio_seconds": None,
            "latency_seconds": None, "generated_tokens": None, "word_errors": None}  # fmt: skip


def _errors_dict(errors: WordErrors) -> dict:
    return {
        "errors": errors.errors, "substitutions": errors.substitutions, "deletions": errors.deletions,
        "insertions": errors.insertions, "reference_words": errors.reference_words,
    }  # fmt: skip


def _round(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else round(value, digits)


# --- Triton's view ---------------------------------------------------------------------------------------


def statistics_delta(before: dict, after: dict) -> dict:
    """Per model, what happened between two `get_inference_statistics(as_json=True)` snapshots.

    Counters are cumulative since the server started (protobuf JSON writes them as strings).
    """
    earlier = {m["name"]: m for m in before.get("model_stats", [])}
    delta = {}
    for model in after.get("model_stats", []):
        old = earlier.get(model["name"], {})
        inferences = _count(model, old, "inference_count")
        executions = _count(model, old, "execution_count")
        stats, old_stats = model.get("inference_stats", {}), old.get("inference_stats", {})
        ms_per_request = {}
        for name in TRITON_DURATIONS:
            count = _count(stats.get(name, {}), old_stats.get(name, {}), "count")
            ns = _count(stats.get(name, {}), old_stats.get(name, {}), "ns")
            ms_per_request[name] = round(ns / count / 1e6, 4) if count else None
        old_batches = {b["batch_size"]: b for b in old.get("batch_stats", [])}
        histogram = {}
        for batch in model.get("batch_stats", []):
            old_batch = old_batches.get(batch["batch_size"], {})
            runs = _count(batch.get("compute_infer", {}), old_batch.get("compute_infer", {}), "count")
            if runs:
                histogram[str(batch["batch_size"])] = runs
        delta[model["name"]] = {
            "version": model.get("version"),
            "inference_count": inferences,
            "execution_count": executions,
            "mean_batch_size": round(inferences / executions, 3) if executions else None,
            "success_count": _count(stats.get("success", {}), old_stats.get("success", {}), "count"),
            "fail_count": _count(stats.get("fail", {}), old_stats.get("fail", {}), "count"),
            "ms_per_request": ms_per_request,
            "batch_size_histogram": dict(sorted(histogram.items(), key=lambda item: int(item[0]))),
        }
    return delta


def _count(now: dict, then: dict, key: str) -> int:
    return int(now.get(key, 0)) - int(then.get(key, 0))


async def describe_server(client: AsyncTranscriptionClient, url: str) -> dict:
    triton = client.triton
    metadata = await triton.get_server_metadata(as_json=True)
    ready = [m["name"] for m in (await triton.get_model_repository_index(as_json=True)).get("models", [])
             if m.get("state") == "READY"]  # fmt: skip
    max_batch = {}
    for name in sorted(set(ready) | {client.model}):
        config = (await triton.get_model_config(name, as_json=True))["config"]
        max_batch[name] = int(config.get("max_batch_size", 0))
    return {
        "url": url,
        "name": metadata.get("name"),
        "version": metadata.get("version"),
        "model": client.model,
        "max_batch_size": max_batch[client.model],
        "models_max_batch_size": max_batch,
    }


def describe_machine() -> dict:
    """The machine the client runs on (usually the server's too)."""
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": _gpu_names(),
    }


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _gpu_names() -> str:
    """GPU names from nvidia-smi, comma-separated, or "none"."""
    if not shutil.which("nvidia-smi"):
        return "none"
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return ", ".join(names) if done.returncode == 0 and names else "none"
