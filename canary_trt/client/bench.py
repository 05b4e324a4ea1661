"""Benchmark a canary-trt Triton server over gRPC: WER, RTFx, latency and Triton's own statistics. This
module runs the passes; what it builds on: `results.py` (rows and a pass's numbers), `resume.py` (the
partial file), `stats.py` (Triton's counters), `machine.py` (the machine), `report.py` (rendering).

Method (as Triton-ASR-Client and the Open ASR Leaderboard): every clip's audio is loaded (read, resampled
to 16 kHz mono) on the client first, so timing covers the server only. Then, for each concurrency level: a
warm-up of N requests (not counted), Triton's cumulative statistics read, one timed pass over the whole set
with that many requests in flight, statistics read again; the pass's share is the difference. RTFx = audio
seconds of the clips transcribed / wall seconds from the first send to the last reply. `run_benchmark`
returns the report as plain JSON-ready data.

Faults and resume: requests that fail because the server is unavailable or overloaded are retried with
backoff (`retry.RetryPolicy`); a clip that still fails is reported failed with its reason and kind
(`retry.classify`), and every utterance is accounted for exactly once per pass. With an `out` folder, each
finished request (done or failed) is appended at once to `out/partial.jsonl`. Run again with the same
folder and data set, the bench resumes: utterances already done at a level are not sent again; the failed
ones are. RTFx and latency then cover only the requests timed in this run; WER covers every done
utterance.

Long recordings: a clip over `contract.MAX_AUDIO_SECONDS` goes to `canary_qwen_long` as the client sends it
(`api.py`), so a manifest of meetings or lectures is benchmarked as it would be served: its RTFx is the
long-form path's, and each utterance row counts its segments and those that reached their budget. Such
clips take no `max_new_tokens` (the long model budgets each segment by its length): asked for with clips
over the limit, the bench refuses, naming them, from the files' headers before any audio is decoded. A run that ends with nothing failed removes the partial file (the report holds it all); `fresh`
discards an old one first.

Several endpoints (replicas; `url` as `endpoints.EndpointPool` takes it): requests are spread over them, a
replica that dies mid-pass is skipped and its requests re-sent elsewhere (still each utterance once).
Each pass reports how many requests each endpoint answered, Triton's statistics per endpoint and their
sum (raw counters added across the endpoints that answered both before and after the pass; one that did
not is named, not counted).
"""

from __future__ import annotations

import asyncio
import datetime
import time
from pathlib import Path

from ..audio import SAMPLE_RATE, audio_info, duration, load_audio
from ..contract import LONG_FORM_MODEL, MAX_AUDIO_SECONDS
from ..errors import InvalidInput
from .api import MODEL, AsyncTranscriptionClient, RetryPolicy
from .endpoints import split_urls
from .machine import describe_machine
from .manifest import Utterance
from .metrics import NORMALIZER, PERCENTILE_METHOD
from .results import Clip, summarize_pass
from .resume import PARTIAL_NAME, PartialResults, fingerprint
from .retry import UNREADABLE, Failure
from .stats import endpoint_statistics

SCHEMA = "canary-trt-bench/1"
DEFAULT_WARMUP = 8
STATISTICS_TIMEOUT = 10.0  # seconds; a replica that cannot answer by then is reported without statistics


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
        raise InvalidInput("nothing to benchmark: the data set is empty")
    if not concurrency or min(concurrency) < 1 or warmup < 0:
        raise InvalidInput("concurrency levels must be at least 1 and --warmup at least 0")
    if max_new_tokens is not None:
        _refuse_budget_for_long(utterances)
    partial = PartialResults(Path(out) / PARTIAL_NAME, fingerprint(utterances, max_new_tokens, model, prompt), fresh) \
        if out is not None else None  # fmt: skip
    clips = load_clips(utterances)
    options = {"max_new_tokens": max_new_tokens, "prompt": prompt}  # of every request
    report = asyncio.run(_benchmark(url, clips, concurrency, warmup, options, source, model, partial,
                                    retry or RetryPolicy(), timeout))  # fmt: skip
    if partial is not None and not any(p["failed"] for p in report["passes"]):
        partial.path.unlink(missing_ok=True)  # complete: the report holds everything
    return report


def _refuse_budget_for_long(utterances: list[Utterance]) -> None:
    """max_new_tokens with clips the client sends to the long model: refused, from headers only."""

    def seconds(u: Utterance) -> float:
        try:
            return audio_info(u.audio).seconds or 0.0
        except (OSError, ValueError):
            return 0.0  # unreadable: reported as such by the pass

    long = [u for u in utterances if seconds(u) > MAX_AUDIO_SECONDS]
    if long:
        named = ", ".join(str(u.audio) for u in long[:3]) + (f" and {len(long) - 3} more" if len(long) > 3 else "")
        raise InvalidInput(f"--max-new-tokens applies to clips of at most {MAX_AUDIO_SECONDS:g} s, and {len(long)} "
                           f"are longer ({named}): {LONG_FORM_MODEL} sets each segment's budget from its length; "
                           "leave --max-new-tokens out for this data set")  # fmt: skip


def load_clips(utterances: list[Utterance]) -> list[Clip]:
    """Every clip to 16 kHz mono up front; one that cannot be read fails in every pass, with its reason."""
    from tqdm import tqdm

    clips = []
    for index, u in enumerate(tqdm(utterances, desc="loading audio", unit="clip", disable=None)):
        try:
            clips.append(Clip(index, u, load_audio(u.audio)))
        except (OSError, ValueError) as e:  # AudioError is a ValueError; unreadable files are OSErrors
            clips.append(Clip(index, u, None, Failure(str(e), UNREADABLE)))
    return clips


async def _benchmark(url, clips, levels, warmup, options, source, model, partial=None, retry=None,
                     timeout=None) -> dict:  # fmt: skip
    """`options`: each request's max_new_tokens and prompt."""
    started = datetime.datetime.now(datetime.timezone.utc)
    async with AsyncTranscriptionClient(url, model, retry=retry) as control:  # metadata and statistics only
        server = await describe_server(control, ",".join(split_urls(url)))
        passes = []
        for level in levels:
            resumed = partial.transcriptions(level) if partial else {}
            pending = [c for c in clips if c.samples is not None and c.index not in resumed]
            async with AsyncTranscriptionClient(url, model, concurrency=level, timeout=timeout, retry=retry) as client:
                if pending:
                    await _warm_up(client, clips, warmup, options)
                before = await server_statistics(control)
                wall, outcomes = await _timed_pass(client, clips, options, f"concurrency {level}",
                                                   resumed, partial, level)  # fmt: skip
                after = await server_statistics(control)
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
            "long_form_utterances": sum(1 for c in readable if c.samples.size > MAX_AUDIO_SECONDS * SAMPLE_RATE),
        },
        "method": describe_method(levels, warmup, options, retry, timeout),
        "passes": passes,
    }


def describe_method(levels, warmup, options, retry, timeout) -> dict:
    """How the numbers were made, for the report."""
    return {
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
        "long_form": f"clips over {MAX_AUDIO_SECONDS:g} s go to {LONG_FORM_MODEL} (cut at pauses, each segment "
        "transcribed through the ensemble with a budget from its length), the rest to the ensemble; RTFx and "
        "latency cover both as sent",
        "triton": "get_inference_statistics after minus before the timed pass; ms are per request "
        "(ns / count); batch_size_histogram counts executions per batch size; several endpoints: per "
        "endpoint, and in all (raw counters summed over the endpoints that answered before and after)",
        "retries": (lambda r: f"server unavailable or overloaded: up to {r.attempts} attempts, pauses "
                    f"{', '.join(f'{d:g}' for d in r.delays()) or 'none'} s; other errors are not retried")(
            retry or RetryPolicy()),  # fmt: skip
        "timeout_seconds": timeout,  # per request; None: none
        "accounting": "each utterance once per pass: done (resumed: done in an earlier run, read from "
        f"{PARTIAL_NAME}, not sent again) or failed with its reason",
    }


async def server_statistics(control) -> dict[str, dict | None]:
    """Each endpoint's cumulative statistics, None where the server cannot say (e.g. it died mid-pass)."""

    from tritonclient.utils import InferenceServerException

    async def one(endpoint):
        try:
            return await endpoint.triton.get_inference_statistics(as_json=True, client_timeout=STATISTICS_TIMEOUT)
        except InferenceServerException:  # unreachable, dead or too slow; anything else is a bug and propagates
            return None

    endpoints = list(control.endpoints)
    return dict(zip((e.url for e in endpoints), await asyncio.gather(*(one(e) for e in endpoints))))


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
                outcome = Failure.of(e)
            if partial is not None:
                partial.append(level, clip, outcome)
            progress.update()
            return outcome

        start = time.perf_counter()
        results = await asyncio.gather(*(one(c) for c in pending))
        wall = time.perf_counter() - start if pending else 0.0
    by_index = {**resumed, **{c.index: r for c, r in zip(pending, results)}}
    return wall, [by_index.get(c.index, c.error) for c in clips]


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
