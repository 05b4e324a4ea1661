"""Triton's own view of a benchmark pass: `get_inference_statistics(as_json=True)` snapshots taken before
and after it, turned into what the pass added, per endpoint and summed over several."""

from __future__ import annotations

import functools

TRITON_DURATIONS = ("queue", "compute_input", "compute_infer", "compute_output")


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
