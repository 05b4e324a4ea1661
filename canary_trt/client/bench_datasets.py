"""`bench --dataset`: benchmark sets read with `datasets` (`datasets_source.py`), one after another, each with
its own report folder and resume file; the `leaderboard` preset runs the Open ASR Leaderboard's eight sets.

Memory stays bounded on any size of set: a reader thread streams samples and decodes them with the client's
loader into a window of at most `window` clips; a clip's audio is let go once its request is answered, so at
most window + concurrency + warm-up clips are held as audio, and per utterance only its row is kept.

What is timed, per set and concurrency level: the first `warmup` readable clips are sent first (untimed);
then the reader fills its window (untimed: opening the stream and its first download are not the server's
work); then the clock runs from the first timed send to the last reply, while the reader keeps decoding
ahead. Whenever a request slot is free and no decoded clip is ready, the wait is added up and reported
(`input_wait_seconds`): RTFx includes it, so a set read from a slow network says so instead of silently
measuring the download. RTFx = audio seconds transcribed / those wall seconds (the leaderboard's definition).
Clips over 40 s go to the long-form model as the client sends them; with --max-new-tokens such a clip fails
by name (that model budgets each segment itself), so leave it out: the server's default is the leaderboard's 128.

Resume: finished requests go to `OUT/<set>/partial.jsonl` as they finish (`resume.py`); its header names the
set (spec, max_samples), model, token limit and prompt, and each row the sample it belongs to, so a rerun
continues at the sample where a run stopped and refuses a set whose samples changed. A set that finished
with nothing failed keeps its `report.json` and no partial file; a rerun reuses that report without reading
the set again, so a cut-short leaderboard run continues at the set where it stopped.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..contract import MAX_AUDIO_SECONDS, SAMPLE_RATE
from ..errors import InvalidInput
from .api import MODEL, AsyncTranscriptionClient, RetryPolicy
from .bench import SCHEMA, describe_method, describe_server, server_statistics
from .datasets_source import DatasetError, DatasetSource, DatasetSpec
from .endpoints import split_urls
from .leaderboard import (IGNORED_REFERENCES, PUBLISHED_MEAN_WER, PUBLISHED_RTFX, PUBLISHED_SOURCE, TEXT_COLUMNS,
                          mean_wer_percent, overall_rtfx, set_wer_percent)
from .machine import describe_machine
from .report import JSON_NAME, write_report
from .results import Clip, summarize_pass
from .resume import PARTIAL_NAME, PARTIAL_SCHEMA, PartialResults
from .retry import Failure
from .stats import endpoint_statistics

SUMMARY_SCHEMA = "canary-trt-bench-datasets/1"
DEFAULT_WINDOW = 64  # decoded clips the reader may hold ahead of the sends
_DONE = object()  # the reader's end-of-stream mark
_POLL = 0.1  # seconds between the reader's checks that the pass still wants it


@dataclass(frozen=True)
class DatasetRun:
    """One set to benchmark: what to read, what the report calls it, what the model card published for it."""

    spec: DatasetSpec
    name: str
    published_wer: float | None = None  # percent


def run_dataset_benchmark(url: str | list[str], runs: list[DatasetRun], concurrency: list[int], warmup: int, out: Path,
                          max_new_tokens: int | None = None, model: str = MODEL, fresh: bool = False,
                          retry: RetryPolicy | None = None, timeout: float | None = None, prompt: str | None = None,
                          max_samples: int | None = None, window: int = DEFAULT_WINDOW, build: dict | None = None,
                          preset: str | None = None) -> dict:  # fmt: skip
    """Each set in turn (its report in OUT/<set>/), then the summary over them (returned, and written to OUT by
    the caller). `build`: the server's export.json, for the report (None: not given)."""
    if not runs:
        raise InvalidInput("nothing to benchmark: no data sets given")
    if not concurrency or min(concurrency) < 1 or warmup < 0:
        raise InvalidInput("concurrency levels must be at least 1 and --warmup at least 0")
    if window < 1 or (max_samples is not None and max_samples < 1):
        raise InvalidInput("--window and --max-samples must be at least 1")
    slugs = [r.spec.slug for r in runs]
    if len(set(slugs)) < len(slugs):
        raise InvalidInput(f"two data sets would share a report folder: {', '.join(slugs)}")
    started = datetime.datetime.now(datetime.timezone.utc)
    options = {"max_new_tokens": max_new_tokens, "prompt": prompt}
    retry = retry or RetryPolicy()
    reports = []
    for run in runs:
        folder = Path(out) / run.spec.slug
        report = asyncio.run(_one_set(url, run, concurrency, warmup, options, model, folder, fresh, retry, timeout,
                                      max_samples, window))  # fmt: skip
        report["build"] = build
        if not report["dataset"].get("reused"):
            write_report(report, folder)
        reports.append(report)
    return summarize_sets(reports, runs, started, build, preset, window)


def summarize_sets(reports: list[dict], runs: list[DatasetRun], started, build, preset, window) -> dict:
    """The per-set rows (per concurrency level) and the leaderboard's mean WER and overall RTFx."""
    levels = reports[0]["method"]["concurrency"]
    by_level = []
    for i, level in enumerate(levels):
        rows = []
        for run, report in zip(runs, reports):
            p = report["passes"][i]
            rows.append({
                "name": run.name, "dataset": run.spec.label, "folder": run.spec.slug,
                "wer_percent": set_wer_percent(p["wer"]["wer"]), "published_wer_percent": run.published_wer,
                "rtfx": p["rtfx"], "audio_seconds": report["dataset"]["audio_seconds"],
                "timed_audio_seconds": p["audio_seconds"], "wall_seconds": p["wall_seconds"],
                "input_wait_seconds": p["input_wait_seconds"], "samples": len(p["utterances"]), "done": p["done"],
                "failed": p["failed"], "resumed": p["resumed"],
                "skipped_references": report["dataset"]["skipped_references"],
                "reused": bool(report["dataset"].get("reused")),
            })  # fmt: skip
        by_level.append({
            "concurrency": level, "sets": rows,
            "mean_wer_percent": mean_wer_percent([r["wer_percent"] for r in rows]),
            "rtfx": overall_rtfx([r["timed_audio_seconds"] for r in rows], [r["wall_seconds"] for r in rows]),
        })  # fmt: skip
    first = reports[0]
    return {
        "schema": SUMMARY_SCHEMA,
        "started": started.isoformat(timespec="seconds"),
        "preset": preset,
        "machine": describe_machine(),
        "server": first["server"],
        "build": build,
        "method": {**first["method"], "window_clips": window,
                   "mean_wer": "plain mean of the per-set WERs, each in percent rounded to 2 decimals (the "
                   "leaderboard's); none unless every set has one",
                   "overall_rtfx": "total audio seconds / total wall seconds of the timed requests over all sets "
                   "(the leaderboard's composite RTFx)"},  # fmt: skip
        "levels": by_level,
        "published": {"source": PUBLISHED_SOURCE, "mean_wer_percent": PUBLISHED_MEAN_WER, "rtfx": PUBLISHED_RTFX}
        if preset else None,  # fmt: skip
    }


def dataset_fingerprint(spec: DatasetSpec, max_samples: int | None, options: dict, model: str) -> dict:
    """What a partial file (or a finished report) must match to be resumed (or reused)."""
    return {"schema": PARTIAL_SCHEMA, "dataset": spec.label, "max_samples": max_samples, **options, "model": model}


def _reusable(folder: Path, header: dict, levels: list[int]) -> dict | None:
    """A finished report of the same set and settings, with nothing failed and no partial file left."""
    path = folder / JSON_NAME
    if (folder / PARTIAL_NAME).exists() or not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    same = report.get("dataset", {}).get("fingerprint") == header and report["method"]["concurrency"] == levels
    if not same or any(p["failed"] for p in report["passes"]):
        return None
    report["dataset"]["reused"] = True
    return report


async def _one_set(url, run, levels, warmup, options, model, folder, fresh, retry, timeout, max_samples, window):
    header = dataset_fingerprint(run.spec, max_samples, options, model)
    if not fresh and (reused := _reusable(folder, header, levels)) is not None:
        return reused
    partial = PartialResults(folder / PARTIAL_NAME, header, fresh)
    source = DatasetSource(run.spec, max_samples)
    started = datetime.datetime.now(datetime.timezone.utc)
    async with AsyncTranscriptionClient(url, model, retry=retry) as control:
        server = await describe_server(control, ",".join(split_urls(url)))
        passes, seen = [], None
        for level in levels:
            resumed = partial.transcriptions(level)
            async with AsyncTranscriptionClient(url, model, concurrency=level, timeout=timeout, retry=retry) as client:
                stream = _Stream(source, resumed, partial, level, window)
                try:
                    warm = await stream.warm_up(client, warmup, options)
                    before = await server_statistics(control)
                    wall, waited, clips, outcomes = await stream.timed_pass(client, options, f"{run.name}, concurrency {level}")
                    after = await server_statistics(control)
                finally:
                    stream.stop()
            triton, by_endpoint = endpoint_statistics(before, after)
            summary = summarize_pass(level, warm, wall, clips, outcomes, triton, resumed=set(resumed),
                                     triton_by_endpoint=by_endpoint)  # fmt: skip
            passes.append({**summary, "input_wait_seconds": round(waited, 4)})
            seen = stream.seen
    if not any(p["failed"] for p in passes):
        partial.path.unlink(missing_ok=True)  # complete: the report holds everything
    return {
        "schema": SCHEMA,
        "started": started.isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "server": server,
        "dataset": {
            "source": run.spec.label, "name": run.name, "max_samples": max_samples, "fingerprint": header,
            "utterances": len(passes[-1]["utterances"]), "skipped_references": source.skipped,
            "audio_seconds": round(seen.audio_seconds, 3), "unreadable": seen.unreadable,
            "long_form_utterances": seen.long_form, "published_wer_percent": run.published_wer,
        },  # fmt: skip
        "method": {**describe_method(levels, warmup, options, retry, timeout),
                   "timed": "from the first timed send to the last reply; warm-up, opening the stream and filling "
                   "the reader's window of decoded clips are not timed; input_wait_seconds: time a free request "
                   "slot waited for decoded audio while timed (included in RTFx)",
                   "references": f"the first column of {', '.join(TEXT_COLUMNS)}; those normalizing to "
                   f"{' or '.join(repr(r) for r in IGNORED_REFERENCES)} are skipped (the leaderboard's filter)"},  # fmt: skip
        "passes": passes,
    }


@dataclass
class _Seen:
    """What the stream held, for the report: audio seconds (decoded, or as an earlier run recorded it)."""

    audio_seconds: float = 0.0
    unreadable: int = 0
    long_form: int = 0

    def add(self, seconds: float | None) -> None:
        if seconds is None:
            self.unreadable += 1
            return
        self.audio_seconds += seconds
        self.long_form += seconds > MAX_AUDIO_SECONDS


class _Stream:
    """One pass over a set: a reader thread decodes samples into a bounded queue; the pass sends them with at
    most `level` in flight. Resumed samples are not decoded (their rows come from the partial file)."""

    def __init__(self, source: DatasetSource, resumed: dict, partial: PartialResults, level: int, window: int):
        self.source, self.resumed, self.partial, self.level = source, resumed, partial, level
        self.window = queue.Queue(maxsize=window)
        self.held: list = []  # taken from the window for the warm-up, sent first in the timed pass
        self.seen = _Seen()
        self._names = {index: row["audio"] for (_, index), row in partial.rows.items()}  # sample per resumed row
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"read {source.spec.label}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for sample in self.source.samples():
                audio = None if sample.index in self.resumed else sample.decode()
                if not self._put((sample, audio)):
                    return
        except BaseException as e:  # re-raised by the pass (a bad spec, a broken stream)
            self._put(e)
            return
        self._put(_DONE)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self.window.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def stop(self) -> None:
        self._stop.set()
        self._reader.join(timeout=5 * _POLL)

    async def _next(self):
        item = self.held.pop(0) if self.held else await asyncio.to_thread(self.window.get)
        if isinstance(item, BaseException):
            raise item
        return item

    def _check_sample(self, sample) -> None:
        """A resumed row must belong to the sample now at its index: a set that changed is not resumed."""
        name = str(sample.utterance.audio)
        earlier = self._names.get(sample.index, name)
        if earlier != name:
            raise DatasetError(f"{self.partial.path}: sample {sample.index} was {earlier}, the set now has {name} "
                               "there; run with --fresh to start this set over")  # fmt: skip

    async def warm_up(self, client, requests: int, options: dict) -> int:
        """Sends the first `requests` readable clips not yet done (repeated if fewer), untimed; returns how many
        were sent (none when nothing is left to send). What it reads is held for the timed pass."""
        clips = []
        while len(clips) < requests:
            item = await asyncio.to_thread(self.window.get)
            if isinstance(item, BaseException):
                raise item
            self.held.append(item)
            if item is _DONE:
                break
            if item[1] is not None and not isinstance(item[1], Failure):
                clips.append(item[1])
        if not clips:
            return 0
        warm = [clips[i % len(clips)] for i in range(requests)]
        await client.transcribe_many(warm, sample_rate=SAMPLE_RATE, return_exceptions=True, **options)
        return requests

    async def _window_filled(self) -> None:
        while not self.window.full() and self._reader.is_alive():
            await asyncio.sleep(_POLL / 10)

    async def timed_pass(self, client, options: dict, label: str):
        """Returns (wall seconds, seconds a free slot waited for audio, clips, outcome per clip)."""
        from tqdm import tqdm

        await self._window_filled()
        slots = asyncio.Semaphore(self.level)
        clips, sent, outcomes = [], {}, {}
        start, waited = None, 0.0
        with tqdm(desc=label, unit="clip", disable=None) as progress:

            async def send(clip: Clip, samples):
                try:
                    outcome = await client.transcribe(samples, sample_rate=SAMPLE_RATE, **options)
                except Exception as e:  # a server error or timeout fails this clip, not the pass
                    outcome = Failure.of(e)
                finally:
                    slots.release()
                self.partial.append(self.level, clip, outcome)
                progress.update()
                return outcome

            while True:
                await slots.acquire()
                asked = time.perf_counter()
                item = await self._next()
                if start is not None:
                    waited += time.perf_counter() - asked
                if item is _DONE:
                    slots.release()
                    break
                sample, audio = item
                self._check_sample(sample)
                unreadable = audio if isinstance(audio, Failure) else None
                clip = Clip(sample.index, sample.utterance, None, unreadable)
                clips.append(clip)
                if sample.index in self.resumed or unreadable is not None:
                    slots.release()
                    outcome = self.resumed.get(sample.index, unreadable)
                    self.seen.add(None if unreadable is not None else outcome.audio_seconds)
                    if unreadable is not None and (self.level, sample.index) not in self.partial.rows:
                        self.partial.append(self.level, clip, unreadable)
                    outcomes[sample.index] = outcome
                    continue
                self.seen.add(audio.size / SAMPLE_RATE)
                if start is None:
                    start = time.perf_counter()
                sent[sample.index] = asyncio.create_task(send(clip, audio))
            results = await asyncio.gather(*sent.values())
            wall = time.perf_counter() - start if sent else 0.0
        outcomes.update(zip(sent, results))
        return wall, waited, clips, [outcomes[c.index] for c in clips]
