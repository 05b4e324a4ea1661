"""Render a benchmark report (the dict `bench.run_benchmark` returns): report.json, report.md, rtfx_latency.png."""

from __future__ import annotations

import json
from pathlib import Path

JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "report.json", "report.md", "rtfx_latency.png"


def write_report(report: dict, out: str | Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / MARKDOWN_NAME).write_text(markdown(report), encoding="utf-8")
    plot(report["passes"], out / PLOT_NAME)
    return [out / JSON_NAME, out / MARKDOWN_NAME, out / PLOT_NAME]


def summary_rows(report: dict) -> list[list[str]]:
    """One row per concurrency level (header first): the table in report.md and on the terminal."""
    rows = [["concurrency", "done", "failed", "wall s", "audio s", "RTFx", "p50 ms", "p90 ms", "p99 ms", "WER %"]]
    for p in report["passes"]:
        latency = p["latency_seconds"]
        rows.append([
            str(p["concurrency"]), str(p["done"]), str(p["failed"]), f"{p['wall_seconds']:.2f}",
            f"{p['audio_seconds']:.2f}", _number(p["rtfx"]), *(_ms(latency[k]) for k in ("p50", "p90", "p99")),
            _percent(p["wer"]["wer"]),
        ])  # fmt: skip
    return rows


def markdown(report: dict) -> str:
    machine, server, data, method = report["machine"], report["server"], report["dataset"], report["method"]
    lines = [
        f"# canary-trt benchmark ({report['started']})",
        "",
        _machine_line(machine),
        f"- server: Triton {server['version']} at {server['url']}"
        + (f" ({len(server['endpoints'])} endpoints: {', '.join(server['endpoints'])})"
           if len(server.get("endpoints", [])) > 1 else "")  # fmt: skip
        + f"; model `{server['model']}` "
        f"(max_batch_size {server['max_batch_size']}; per model: "
        + ", ".join(f"{name} {size}" for name, size in server["models_max_batch_size"].items()) + ")",
        f"- data: {data['source']}: {data['utterances']} utterances, {data['audio_seconds']:.2f} s of audio"
        + (f", {data['unreadable']} unreadable" if data["unreadable"] else "")
        + (f", {data['long_form_utterances']} of them long recordings" if data.get("long_form_utterances") else ""),
        f"- max new tokens: {method['max_new_tokens'] or 'server default'}; untimed warm-up requests before "
        f"each level: {method['warmup_requests']}",
        "",
        "## Summary",
        "",
        *_table(summary_rows(report)),
        "",
        f"- WER: {method['wer']}.",
        f"- RTFx: {method['rtfx']}.",
        f"- Latency: {method['latency']}; percentiles: {method['percentiles']}.",
        f"- Triton: {method['triton']}.",
        *([f"- Long recordings: {method['long_form']}."] if data.get("long_form_utterances") else []),
        *([f"- Retries: {method['retries']}."] if "retries" in method else []),
        *([f"- Accounting: {method['accounting']}."] if "accounting" in method else []),
    ]
    for p in report["passes"]:
        lines += ["", f"## Concurrency {p['concurrency']}", ""]
        if "resumed" in p:
            kinds = ", ".join(f"{kind} {n}" for kind, n in p.get("failed_by_kind", {}).items())
            lines += [f"Accounting: {len(p['utterances'])} utterances, each once: {p['done']} done "
                      f"({p['resumed']} resumed from an earlier run, {p['sent']} sent in this run), "
                      f"{p['failed']} failed" + (f" ({kinds})" if kinds else "") + ".", ""]  # fmt: skip
        if data.get("long_form_utterances"):
            truncated = p["truncated_segments"]
            lines += [f"Segments of the done utterances: {p['segments']}, "
                      + ("of which those that reached their budget: not known (the ensemble's default budget)"
                         if truncated is None else f"{truncated} reached their new-token budget") + ".", ""]  # fmt: skip
        lines += _triton_table(p["triton"])
        answered, by_endpoint = p.get("requests_by_endpoint", {}), p.get("triton_by_endpoint", {})
        if len(answered) > 1 or len(by_endpoint) > 1:  # several replicas
            lines += ["", "Requests answered per endpoint in this run: "
                      + (", ".join(f"`{url}` {n}" for url, n in answered.items()) or "none")
                      + ". The Triton table above sums the endpoints' tables below (those with statistics "
                      "before and after the pass)."]  # fmt: skip
            for url, models in by_endpoint.items():
                lines += ["", f"Endpoint `{url}`:", ""]
                lines += [models["unavailable"] + "."] if "unavailable" in models else _triton_table(models)
        failed = [u for u in p["utterances"] if u["status"] == "failed"]
        if failed:
            lines += ["", "Failed:", "", *(f"- `{u['audio']}`: {u['error']}" for u in failed)]
        lines += ["", "<details><summary>Per utterance</summary>", "", *_utterance_table(p["utterances"]), "",
                  "</details>"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _machine_line(machine: dict) -> str:
    return (f"- client machine: {machine['cpu']}, {machine['cpu_cores']} cores"
            + (f" ({' '.join(machine['cpu_flags']) or 'no AVX2'})" if machine.get("cpu_flags") is not None else "")
            + f", {machine['memory_gib']} GiB; GPU: {machine['gpu']}; {machine['os']}, Python {machine['python']}")


def write_summary(summary: dict, out: str | Path) -> list[Path]:
    """A data sets run's summary (`bench_datasets.summarize_sets`): OUT/report.json and OUT/report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / MARKDOWN_NAME).write_text(summary_markdown(summary), encoding="utf-8")
    return [out / JSON_NAME, out / MARKDOWN_NAME]


def sets_rows(level: dict, published: dict | None = None) -> list[list[str]]:
    """One concurrency level of a data sets run: a row per set, then the mean (header first)."""
    rows = [["set", "WER %", "model card WER %", "RTFx", "audio h", "samples", "failed", "skipped refs",
             "input wait s", "report"]]  # fmt: skip
    for r in level["sets"]:
        rows.append([r["name"], _number(r["wer_percent"]), _number(r["published_wer_percent"]), _number(r["rtfx"]),
                     f"{r['audio_seconds'] / 3600:.3f}", str(r["samples"]), str(r["failed"]),
                     str(r["skipped_references"]), _number(r["input_wait_seconds"]),
                     f"{r['folder']}/" + (" (reused)" if r["reused"] else "")])  # fmt: skip
    published = published or {}
    rows.append(["**mean**", _number(level["mean_wer_percent"]), _number(published.get("mean_wer_percent")),
                 _number(level["rtfx"]), f"{sum(r['audio_seconds'] for r in level['sets']) / 3600:.3f}",
                 str(sum(r["samples"] for r in level["sets"])), str(sum(r["failed"] for r in level["sets"])),
                 str(sum(r["skipped_references"] for r in level["sets"])), "", ""])  # fmt: skip
    return rows


def summary_markdown(summary: dict) -> str:
    server, method, build = summary["server"], summary["method"], summary.get("build")
    title = "Open ASR Leaderboard protocol" if summary.get("preset") else "data sets"
    lines = [
        f"# canary-trt benchmark, {title} ({summary['started']})",
        "",
        _machine_line(summary["machine"]),
        f"- server: Triton {server['version']} at {server['url']}; model `{server['model']}`",
        "- build: " + (f"target {build.get('target')}, precision {build.get('precision')}" if build
                       else "not given (pass --build BUILD to name its target and precision)"),  # fmt: skip
        f"- concurrency (requests in flight): {', '.join(map(str, method['concurrency']))}; untimed warm-up "
        f"requests per set and level: {method['warmup_requests']}; max new tokens: "
        f"{method['max_new_tokens'] or 'server default'}; decoded clips read ahead: {method['window_clips']}",
    ]
    for level in summary["levels"]:
        lines += ["", f"## Concurrency {level['concurrency']}", "", *_table(sets_rows(level, summary.get("published")))]
    published = summary.get("published")
    lines += [
        "",
        f"- WER: {method['wer']}; per set in percent, 2 decimals. Mean: {method['mean_wer']}.",
        f"- RTFx: {method['rtfx']}. Overall: {method['overall_rtfx']}.",
        f"- Timed: {method['timed']}.",
        f"- References: {method['references']}.",
        *([f"- Model card: {published['source']}; its RTFx {_number(published.get('rtfx'))} was measured by "
           "NeMo in-process (bf16, batches of 192), this one through Triton as the client sees it; '-' where "
           "the card's value was not found."] if published else []),  # fmt: skip
        "- Each set's own report (per utterance, Triton statistics): its folder above.",
    ]
    return "\n".join(lines) + "\n"


def _triton_table(models: dict) -> list[str]:
    rows = [["model", "inferences", "executions", "mean batch", "queue ms", "input ms", "infer ms", "output ms",
             "batch sizes (executions)"]]  # fmt: skip
    for name, m in models.items():
        ms = m["ms_per_request"]
        histogram = ", ".join(f"{size}: {runs}" for size, runs in m["batch_size_histogram"].items())
        rows.append([
            name, str(m["inference_count"]), str(m["execution_count"]), str(m["mean_batch_size"] or "-"),
            *(_number(ms[k]) for k in ("queue", "compute_input", "compute_infer", "compute_output")), histogram or "-",
        ])  # fmt: skip
    return _table(rows)


def _utterance_table(utterances: list[dict]) -> list[str]:
    rows = [["#", "audio", "status", "latency ms", "S", "D", "I", "ref words", "hypothesis / error"]]
    for u in utterances:
        e = u["word_errors"] or {}
        rows.append([
            str(u["index"]), Path(u["audio"]).name, u["status"], _ms(u["latency_seconds"]),
            *(str(e.get(k, "-")) for k in ("substitutions", "deletions", "insertions", "reference_words")),
            u["hypothesis"] if u["status"] == "done" else u["error"],
        ])  # fmt: skip
    return _table(rows)


def _table(rows: list[list[str]]) -> list[str]:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return [line(rows[0]), line(["---"] * len(rows[0])), *(line(r) for r in rows[1:])]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.2f}"


def plot(passes: list[dict], path: Path) -> None:
    """RTFx and p90 latency against concurrency, side by side."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    levels = [p["concurrency"] for p in passes]
    p90 = [p["latency_seconds"]["p90"] for p in passes]
    p90_ms = [float("nan") if seconds is None else seconds * 1000 for seconds in p90]  # nan: no point drawn
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    rtfx = [float("nan") if p["rtfx"] is None else p["rtfx"] for p in passes]
    for axis, values, label in ((left, rtfx, "RTFx (audio s / wall s)"),
                                (right, p90_ms, "p90 latency (ms)")):  # fmt: skip
        axis.plot(levels, values, marker="o")
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(c) for c in levels])
        axis.minorticks_off()
        axis.set_xlabel("concurrent requests")
        axis.set_ylabel(label)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    figure.suptitle("canary-trt over gRPC")
    figure.savefig(path, dpi=120)
    plt.close(figure)
