"""Benchmark a canary-trt Triton server over gRPC: WER, RTFx, latency and Triton's own statistics.

Method (as Triton-ASR-Client and the Open ASR Leaderboard): every clip is decoded on the client first,
so timing covers the server only. Then, for each concurrency level: a warm-up of N requests (not
counted), Triton's cumulative statistics read, one timed pass over the whole set with that many requests
in flight, statistics read again; the pass's share is the difference. RTFx = audio seconds of the clips
transcribed / wall seconds from the first send to the last reply. `run_benchmark` returns the report as
plain JSON-ready data; `report.py` renders it.

Faults and resume: requests that fail because the server is unavailable or overloaded are retried with
backoff (`api.RetryPolicy`); a clip that still fails is reported failed with its reason, and every
utterance is accounted for exactly once per pass. With an `out` folder, each finished request (done or
failed) is appended at once to `out/partial.jsonl` (a header line naming the data set, then one line
per utterance per concurrency level). Run again with the same folder and data set, the bench resumes:
utterances already done at a level are not sent again; the failed ones are. RTFx and latency then cover
only the requests timed in this run; WER covers every done utterance. A run that ends with nothing
failed removes the partial file (the report holds it all); `fresh` discards an old one first.

Several endpoints (replicas; `url` as `api.EndpointPool` takes it): requests are spread over them, a
replica that dies mid-pass is skipped and its requests re-sent elsewhere (still each utterance once).
Each pass reports how many requests each endpoint answered, Triton's statistics per endpoint and their
sum (raw counters added across the endpoints that answered both before and after the pass; one that did
not is named, not counted).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE, duration, load_audio
from .api import MODEL, AsyncTranscriptionClient, RetriesExhausted, RetryPolicy, Transcription, split_urls, status_of
from .manifest import Utterance
from .metrics import NORMALIZER, PERCENTILE_METHOD, WordErrors, corpus_errors, percentiles, rtfx, word_errors

SCHEMA = "canary-trt-bench/1"
PARTIAL_NAME = "partial.jsonl"
PARTIAL_SCHEMA = "canary-trt-bench-partial/1"
DEFAULT_WARMUP = 8
TRITON_DURATIONS = ("queue", "compute_input", "compute_infer", "compute_output")
STATISTICS_TIMEOUT = 10.0  # seconds; a replica that cannot answer by then is reported without statistics


@dataclass
class Clip:
    index: int
    utterance: Utterance
    samples: np.ndarray | None  # None: the audio could not be read
    error: str | None = None


class Failure(str):
    """Why a clip failed (the text), and `kind`: unreadable, unavailable, overloaded, invalid input,
    timeout, server error or client error."""

    kind: str = "error"

    def __new__(cls, text: str, kind: str):
        failure = super().__new__(cls, text)
        failure.kind = kind
        return failure


def failure(error: BaseException) -> Failure:
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, RetriesExhausted):
        return Failure(text, "overloaded" if error.overload else "unavailable")
    status = status_of(error)
    if status == "StatusCode.INVALID_ARGUMENT":
        return Failure(text, "invalid input")
    if status == "StatusCode.DEADLINE_EXCEEDED":  # the client's --timeout
        return Failure(text, "timeout")
    return Failure(text, "server error" if status else "client error")


def run_benchmark(
    url: str | list[str],
    utterances: list[Utterance],
    concurrency: list[int],
    warmup: int = DEFAULT_WARMUP,
    max_new_tokens: int | None = None,
    source: str = "",
    model: str = MODEL,
    out: str | Path | None = None,
    fresh: bool = False,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    prompt: str | None = None,
) -> dict:
    """`out`: the folder for `partial.jsonl` (None: no partial results, no resume); `timeout`: seconds per
    request (None: none); `prompt`: the instruction sent with every request (None: the server's)."""
    if not utterances:
        raise ValueError("nothing to benchmark: the data set is empty")
    if not concurrency or min(concurrency) < 1 or warmup < 0:
        raise ValueError("concurrency levels must be at least 1 and --warmup at least 0")
    partial = PartialResults(Path(out) / PARTIAL_NAME, fingerprint(utterances, max_new_tokens, model, prompt), fresh) \
        if out is not None else None  # fmt: skip
    clips = decode(utterances)
    options = {"max_new_tokens": max_new_tokens, "prompt": prompt}  # of every request
    report = asyncio.run(_benchmark(url, clips, concurrency, warmup, options, source, model, partial,
                                    retry or RetryPolicy(), timeout))  # fmt: skip
    if partial is not None and not any(p["failed"] for p in report["passes"]):
        partial.path.unlink(missing_ok=True)  # complete: the report holds everything
    return report


def fingerprint(utterances: list[Utterance], max_new_tokens: int | None, model: str, prompt: str | None = None) -> dict:
    """What a partial file must match to be resumed: the same clips and references, in the same order,
    the same token limit, prompt and model."""
    digest = hashlib.sha256(json.dumps([[str(u.audio), u.text] for u in utterances]).encode("utf-8")).hexdigest()
    return {"schema": PARTIAL_SCHEMA, "dataset_sha256": digest, "utterances": len(utterances),
            "max_new_tokens": max_new_tokens, "prompt": prompt, "model": model}  # fmt: skip


class PartialResults:
    """`partial.jsonl`: a header line (the fingerprint), then one JSON line per finished request:
    {concurrency, index, audio, status: done|failed, hypothesis, token_ids, audio_seconds, latency_seconds,
    endpoint, error, error_kind}. Lines are appended and flushed as requests finish; a torn last line is ignored.
    For each (concurrency, index) the last line counts."""

    def __init__(self, path: Path, header: dict, fresh: bool = False):
        self.path, self.header = Path(path), header
        self.rows: dict[tuple[int, int], dict] = {}
        if self.path.is_file() and not fresh:
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(header) + "\n", encoding="utf-8")

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if header != self.header:
            raise ValueError(f"{self.path} holds partial results of another data set, model, --max-new-tokens or --prompt: "
                             "run with --fresh to discard them, or use another --out")  # fmt: skip
        for line in lines[1:]:
            try:
                row = json.loads(line)
                self.rows[(int(row["concurrency"]), int(row["index"]))] = row
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a line torn by a crash mid-write: that request is simply sent again

    def done(self, level: int) -> dict[int, dict]:
        return {index: row for (lv, index), row in self.rows.items() if lv == level and row["status"] == "done"}

    def append(self, level: int, clip: Clip, outcome: "Transcription | str") -> None:
        row = {"concurrency": level, "index": clip.index, "audio": str(clip.utterance.audio)}
        if isinstance(outcome, Transcription):
            row |= {"status": "done", "hypothesis": outcome.text, "token_ids": outcome.token_ids,
                    "audio_seconds": outcome.audio_seconds, "latency_seconds": outcome.latency_seconds,
                    "endpoint": outcome.endpoint, "error": None, "error_kind": None}  # fmt: skip
        else:
            row |= {"status": "failed", "hypothesis": None, "token_ids": None, "audio_seconds": None,
                    "latency_seconds": None, "endpoint": None, "error": str(outcome),
                    "error_kind": getattr(outcome, "kind", "error")}  # fmt: skip
        self.rows[(level, clip.index)] = row
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()


def decode(utterances: list[Utterance]) -> list[Clip]:
    """Every clip to 16 kHz mono up front; one that cannot be read fails in every pass, with its reason."""
    from tqdm import tqdm

    clips = []
    for index, u in enumerate(tqdm(utterances, desc="decoding audio", unit="clip", disable=None)):
        try:
            clips.append(Clip(index, u, load_audio(u.audio)))
        except (OSError, ValueError) as e:  # AudioError is a ValueError; unreadable files are OSErrors
            clips.append(Clip(index, u, None, Failure(str(e), "unreadable")))
    return clips


async def _benchmark(url, clips, levels, warmup, options, source, model, partial=None, retry=None,
                     timeout=None) -> dict:  # fmt: skip
    """`options`: each request's max_new_tokens and prompt."""
    started = datetime.datetime.now(datetime.timezone.utc)
    async with AsyncTranscriptionClient(url, model, retry=retry) as control:  # metadata and statistics only
        server = await describe_server(control, ",".join(split_urls(url)))
        passes = []
        for level in levels:
            earlier = partial.done(level) if partial else {}
            resumed = {index: _transcription(row) for index, row in earlier.items()}
            pending = [c for c in clips if c.samples is not None and c.index not in resumed]
            async with AsyncTranscriptionClient(url, model, concurrency=level, timeout=timeout, retry=retry) as client:
                if pending:
                    await _warm_up(client, clips, warmup, options)
                before = await _statistics(control)
                wall, outcomes = await _timed_pass(client, clips, options, f"concurrency {level}",
                                                   resumed, partial, level)  # fmt: skip
                after = await _statistics(control)
            triton, by_endpoint = endpoint_statistics(before, after)
            passes.append(summarize_pass(level, warmup if pending else 0, wall, clips, outcomes, triton,
                                         resumed=set(resumed), triton_by_endpoint=by_endpoint))  # fmt: skip
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
            **options,  # max_new_tokens, prompt; None: the server's default
            "wer": f"corpus level: total errors / total reference words of the transcribed clips; both sides "
            f"normalized by {NORMALIZER}, aligned by jiwer",
            "rtfx": "audio seconds of the clips transcribed in this run / wall seconds from this run's first send "
            "to its last reply (a resumed pass: the requests timed in this run only; none sent: no RTFx)",
            "latency": "per request, send -> reply of the attempt that succeeded, seconds; requests timed in "
            "this run only",
            "percentiles": PERCENTILE_METHOD,
            "triton": "get_inference_statistics after minus before the timed pass; ms are per request "
            "(ns / count); batch_size_histogram counts executions per batch size; several endpoints: per "
            "endpoint, and in all (raw counters summed over the endpoints that answered before and after)",
            "retries": (lambda r: f"server unavailable or overloaded: up to {r.attempts} attempts, pauses "
                        f"{', '.join(f'{d:g}' for d in r.delays()) or 'none'} s; other errors are not retried")(
                retry or RetryPolicy()),  # fmt: skip
            "timeout_seconds": timeout,  # per request; None: none
            "accounting": "each utterance once per pass: done (resumed: done in an earlier run, read from "
            f"{PARTIAL_NAME}, not sent again) or failed with its reason",
        },
        "passes": passes,
    }


async def _statistics(control) -> dict[str, dict | None]:
    """Each endpoint's cumulative statistics, None where the server cannot say (e.g. it died mid-pass)."""

    async def one(endpoint):
        try:
            return await endpoint.triton.get_inference_statistics(as_json=True, client_timeout=STATISTICS_TIMEOUT)
        except Exception:
            return None

    endpoints = list(control.endpoints)
    return dict(zip((e.url for e in endpoints), await asyncio.gather(*(one(e) for e in endpoints))))


def _transcription(row: dict) -> Transcription:
    return Transcription(row["hypothesis"], list(row["token_ids"]), float(row["audio_seconds"]),
                         float(row["latency_seconds"]), row.get("endpoint"))  # fmt: skip


async def _warm_up(client, clips, requests, options) -> None:
    """The first `requests` readable clips (repeated if the set is smaller); failures here are ignored:
    the timed pass reports them."""
    readable = [c.samples for c in clips if c.samples is not None]
    if readable and requests:
        warm = [readable[i % len(readable)] for i in range(requests)]
        await client.transcribe_many(warm, sample_rate=SAMPLE_RATE, return_exceptions=True, **options)


async def _timed_pass(client, clips, options, label, resumed=None, partial=None, level=0):
    """One request per readable clip not in `resumed`, all queued at once (the client bounds those in
    flight); each finished one is appended to `partial` at once. Returns the wall time (0.0: nothing sent)
    and, per clip, its transcription or the reason it failed."""
    from tqdm import tqdm

    resumed = resumed or {}
    pending = [c for c in clips if c.samples is not None and c.index not in resumed]
    if partial is not None:
        for clip in clips:
            if clip.samples is None and (level, clip.index) not in partial.rows:
                partial.append(level, clip, clip.error)
    with tqdm(total=len(pending), desc=label, unit="clip", disable=None) as progress:

        async def one(clip: Clip):
            try:
                outcome = await client.transcribe(clip.samples, sample_rate=SAMPLE_RATE, **options)
            except Exception as e:  # a server error or timeout fails this clip, not the pass
                outcome = failure(e)
            if partial is not None:
                partial.append(level, clip, outcome)
            progress.update()
            return outcome

        start = time.perf_counter()
        results = await asyncio.gather(*(one(c) for c in pending))
        wall = time.perf_counter() - start if pending else 0.0
    by_index = {**resumed, **{c.index: r for c, r in zip(pending, results)}}
    return wall, [by_index.get(c.index, c.error) for c in clips]


def summarize_pass(level, warmup, wall, clips, outcomes, triton, resumed=frozenset(), triton_by_endpoint=None) -> dict:
    """`resumed`: indices done in an earlier run; their WER counts, their timing does not.
    `triton_by_endpoint`: per endpoint URL, its statistics delta, or why there is none."""
    done = [(clip, outcome) for clip, outcome in zip(clips, outcomes) if isinstance(outcome, Transcription)]
    timed = [outcome for clip, outcome in done if clip.index not in resumed]
    answered = Counter(outcome.endpoint for outcome in timed if outcome.endpoint)
    errors = {clip.index: word_errors(clip.utterance.text, outcome.text) for clip, outcome in done}
    audio_seconds = sum(outcome.audio_seconds for outcome in timed)
    latencies = [outcome.latency_seconds for outcome in timed]
    corpus = corpus_errors(list(errors.values()))
    failed = [o for o in outcomes if not isinstance(o, Transcription)]
    reasons: dict[str, int] = {}
    for o in failed:
        kind = getattr(o, "kind", "error")
        reasons[kind] = reasons.get(kind, 0) + 1
    return {
        "concurrency": level,
        "warmup_requests": warmup,
        "done": len(done),
        "failed": len(failed),
        "resumed": len(done) - len(timed),
        "sent": sum(1 for c in clips if c.samples is not None and c.index not in resumed),
        "failed_by_kind": dict(sorted(reasons.items())),
        "wall_seconds": round(wall, 4),
        "audio_seconds": round(audio_seconds, 3),
        "rtfx": round(rtfx(audio_seconds, wall), 3) if wall > 0 else None,
        "latency_seconds": {
            **{k: _round(v) for k, v in percentiles(latencies).items()},
            "mean": _round(float(np.mean(latencies)) if latencies else None),
            "max": _round(max(latencies, default=None)),
        },
        "wer": {"wer": corpus.wer, **_errors_dict(corpus)},
        "requests_by_endpoint": dict(sorted(answered.items())),  # answered in this run
        "triton": triton,
        "triton_by_endpoint": triton_by_endpoint or {},
        "utterances": [_utterance_row(c, o, errors.get(c.index), c.index in resumed) for c, o in zip(clips, outcomes)],
    }


def _utterance_row(clip: Clip, outcome: Transcription | str, errors: WordErrors | None, resumed=False) -> dict:
    row = {"index": clip.index, "audio": str(clip.utterance.audio), "reference": clip.utterance.text}
    if isinstance(outcome, Transcription):
        return {
            **row, "status": "done", "error": None, "error_kind": None, "resumed": resumed,
            "hypothesis": outcome.text, "token_ids": outcome.token_ids,
            "audio_seconds": round(outcome.audio_seconds, 3), "latency_seconds": _round(outcome.latency_seconds),
            "endpoint": outcome.endpoint, "generated_tokens": len(outcome.token_ids),
            "word_errors": _errors_dict(errors),
        }  # fmt: skip
    return {**row, "status": "failed", "error": str(outcome), "error_kind": getattr(outcome, "kind", "error"),
            "resumed": False, "hypothesis": None, "token_ids": None, "audio_seconds": None, "latency_seconds": None,
            "endpoint": None, "generated_tokens": None, "word_errors": None}  # fmt: skip


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


def endpoint_statistics(before: dict[str, dict | None], after: dict[str, dict | None]) -> tuple[dict, dict]:
    """(the pass over all endpoints, per endpoint URL) from per-endpoint snapshots. An endpoint without both
    snapshots gets {"unavailable": why} and stays out of the sum: its counters cannot be told apart."""
    per_endpoint, complete = {}, []
    for url in dict.fromkeys([*before, *after]):
        then, now = before.get(url), after.get(url)
        if then is not None and now is not None:
            per_endpoint[url] = statistics_delta(then, now)
            complete.append(url)
        else:
            missing = " and ".join(w for w, s in (("before", then), ("after", now)) if s is None)
            per_endpoint[url] = {"unavailable": f"no statistics {missing} the pass: the server did not answer "
                                 "(down, or died mid-pass)"}  # fmt: skip
    total = statistics_delta(sum_statistics(before[u] for u in complete), sum_statistics(after[u] for u in complete))
    return total, per_endpoint


_COUNTERS = {"inference_count", "execution_count", "count", "ns"}
_KEYED_LISTS = {"model_stats": "name", "batch_stats": "batch_size"}


def sum_statistics(snapshots) -> dict:
    """Several servers' `get_inference_statistics(as_json=True)` as one: counters added model by model and
    batch size by batch size (ns too, so ms per request come out weighted by requests)."""
    return functools.reduce(_add_counters, snapshots, {})


def _add_counters(total: dict, part: dict) -> dict:
    for key, value in part.items():
        if key in _COUNTERS:
            total[key] = int(total.get(key, 0)) + int(value)
        elif isinstance(value, dict):
            _add_counters(total.setdefault(key, {}), value)
        elif key in _KEYED_LISTS:  # one entry per model name / per batch size
            field = _KEYED_LISTS[key]
            entries = {entry[field]: entry for entry in total.setdefault(key, [])}
            for item in value:
                if item[field] not in entries:
                    entries[item[field]] = {}
                    total[key].append(entries[item[field]])
                _add_counters(entries[item[field]], item)
        else:
            total.setdefault(key, value)  # names, versions: the first server's
    return total


async def describe_server(client: AsyncTranscriptionClient, url: str) -> dict:
    """Metadata and model limits from the first endpoint that answers (replicas serve the same repository);
    `url`: as given, `endpoints`: what it stands for."""
    errors = []
    for endpoint in client.endpoints:
        try:
            metadata = await endpoint.triton.get_server_metadata(as_json=True)
            break
        except Exception as e:
            errors.append(e)
    else:
        raise errors[-1]
    triton = endpoint.triton
    ready = [m["name"] for m in (await triton.get_model_repository_index(as_json=True)).get("models", [])
             if m.get("state") == "READY"]  # fmt: skip
    max_batch = {}
    for name in sorted(set(ready) | {client.model}):
        config = (await triton.get_model_config(name, as_json=True))["config"]
        max_batch[name] = int(config.get("max_batch_size", 0))
    return {
        "url": url,
        "endpoints": [e.url for e in client.endpoints],
        "described_by": endpoint.url,
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
