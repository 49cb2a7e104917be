"""From a figures file to what people read: report.png and the tables in README.md.

    python -m bench.report bench/results/2026-12-01.json [--png P] [--readme R]

`bench` calls this after every run. The tables replace whatever stands between the two
marker comments of the README; the rest of the README is left as it is.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

# The README's generated part sits between these two lines.
BEGIN = "<!-- bench:results:begin -->"
END = "<!-- bench:results:end -->"
# One colour per worker variant, the same in every chart.
VARIANT_COLOURS = {
    "celery-defaults": "#4c72b0",
    "project-config": "#dd8452",
    "ledger": "#c44e52",
    "redis-floor": "#8c8c8c",
}


def _f(figure: dict[str, Any], digits: int = 1) -> str:
    """median (min-max)"""
    return (
        f"{figure['median']:,.{digits}f} ({figure['min']:,.{digits}f}-{figure['max']:,.{digits}f})"
    )


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows), ""]


# --- Markdown ----------------------------------------------------------------------------


def worker_table(worker: dict[str, Any]) -> list[str]:
    variants = list(dict.fromkeys(r["variant"] for r in worker["results"]))
    cells = list(dict.fromkeys((r["task"], r["pool"], r["concurrency"]) for r in worker["results"]))
    by_key = {(r["variant"], r["task"], r["pool"]): r for r in worker["results"]}
    rows = []
    for task, pool, concurrency in cells:
        row = [
            f"{task}, {by_key[(variants[0], task, pool)]['tasks']} tasks",
            f"{pool} -c{concurrency}",
        ]
        for variant in variants:
            found = by_key[(variant, task, pool)]
            row.append(f"{_f(found['throughput'])} · {found['ratio_to_celery_defaults']}x")
        rows.append(row)
    return [
        "Worker throughput, tasks/s: median (min-max) · ratio to celery-defaults",
        "",
        *_table(["tasks", "pool", *variants], rows),
    ]


def producer_table(producer: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["variant"],
            f"`{r['call']}`",
            _f(r["ms_per_task"], 3),
            f"{r['ratio_to_celery_defaults']}x",
        ]
        for r in producer["results"]
    ]
    return [
        "Producer cost, ms per task (no worker running)",
        "",
        *_table(["variant", "call", "ms/task", "ratio"], rows),
    ]


def settings_table(settings: dict[str, Any]) -> list[str]:
    rows = [
        [r["step"], _f(r["throughput"]), f"{r['ratio_to_celery_defaults']}x"]
        for r in settings["results"]
    ]
    return [
        f"Settings, one step at a time: no-op tasks ({settings['tasks']}),"
        f" {settings['pool']} -c{settings['concurrency']}, tasks/s",
        "",
        *_table(["step (keeps the ones above)", "tasks/s", "ratio"], rows),
    ]


def api_table(api: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["endpoint"],
            str(r["connections"]),
            r["app"],
            _f(r["requests_per_second"], 0),
            _f(r["p50_ms"]),
            _f(r["p90_ms"]),
            _f(r["p99_ms"]),
            f"{r['cpu_ms_per_request']['median']:.2f}",
            str(r["non_2xx"]),
            str(r["socket_errors"]),
            f"{r['ratio_to_project_open']}x",
            f"{r['ratio_to_bare']}x",
            f"{r['ratio_to_celery_only']}x",
        ]
        for r in api["results"]
    ]
    header = ["endpoint", "conns", "app", "req/s", "p50 ms", "p90 ms", "p99 ms"]
    header += ["CPU ms/req", "non-2xx", "socket errors", "vs open", "vs bare", "vs celery-only"]
    return [
        f"API ({api['loader']}, {api['seconds_per_run']} s per run,"
        f" {api['api_workers']} gunicorn workers each): median (min-max)",
        "",
        *_table(header, rows),
    ]


def scaling_tables(scaling: dict[str, Any]) -> list[str]:
    curve = [
        [str(r["concurrency"]), str(r["tasks"]), _f(r["throughput"])]
        for r in scaling["concurrency"]
    ]
    sizes = [
        [
            f"{r['final_rows']:,}",
            f"{r['stale_rows']:,}",
            _f(r["reconcile_seconds"], 3),
            _f(r["lookup_p99_ms"]),
            _f(r["get_p99_ms"]),
            _f(r["get_requests_per_second"], 0),
        ]
        for r in scaling["ledger"]
    ]
    return [
        "Scaling: ledger path, no-op tasks, prefork",
        "",
        *_table(["concurrency", "tasks", "tasks/s"], curve),
        "Scaling: ledger size",
        "",
        *_table(
            [
                "final rows",
                "stale rows",
                "reconcile pass, s",
                "GET p99 alone, ms",
                "GET p99 c16, ms",
                "GET req/s c16",
            ],
            sizes,
        ),
    ]


def recovery_table(recovery: dict[str, Any]) -> list[str]:
    if recovery["status"] != "measured":
        return [f"Recovery: not run (no `{recovery['source']}`; `make test-chaos` writes it)", ""]
    rows = [
        [name, key.replace("_", " "), f"{value:g}"]
        for name, found in recovery["scenarios"].items()
        for key, value in found.items()
    ]
    return [
        f"Recovery, from `{recovery['source']}` ({recovery['measured_at']})",
        "",
        *_table(["chaos scenario", "figure", "seconds"], rows),
    ]


def markdown(document: dict[str, Any]) -> str:
    scenarios = document["scenarios"]
    machine = document["machine"]
    versions = document["versions"]
    lines = [
        f"Measured {document['date']} in {document['duration_seconds'] / 60:.1f} min:"
        f" `{document['command']}`",
        "",
        f"{machine['cores']} cores ({machine['cpu_model']}), {machine['memory_gib']} GiB;"
        f" Python {versions['python']}, celery {versions['celery']}, kombu {versions['kombu']},"
        f" redis-py {versions['redis']}, SQLAlchemy {versions['sqlalchemy']};"
        f" {versions['database_server']}, Redis {versions['redis_server']}.",
        "",
    ]
    sections = {
        "worker": worker_table,
        "settings": settings_table,
        "producer": producer_table,
        "api": api_table,
        "scaling": scaling_tables,
        "recovery": recovery_table,
    }
    for name, render in sections.items():
        if name in scenarios:
            lines += render(scenarios[name])
    return "\n".join(lines).rstrip() + "\n"


def update_readme(readme: Path, table: str) -> None:
    text = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no {BEGIN} ... {END} markers")
    readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n{table}{END}", text))


# --- charts ------------------------------------------------------------------------------


def worker_chart(axes: Any, worker: dict[str, Any]) -> None:
    variants = list(dict.fromkeys(r["variant"] for r in worker["results"]))
    cells = list(dict.fromkeys((r["task"], r["pool"]) for r in worker["results"]))
    width = 0.8 / len(variants)
    for index, variant in enumerate(variants):
        found = [r for r in worker["results"] if r["variant"] == variant]
        xs = [cells.index((r["task"], r["pool"])) + index * width for r in found]
        heights = [r["throughput"]["median"] for r in found]
        bars = axes.bar(xs, heights, width, label=variant, color=VARIANT_COLOURS.get(variant))
        axes.bar_label(bars, [f"{r['ratio_to_celery_defaults']:.2f}x" for r in found], fontsize=7)
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(cells))])
    axes.set_xticklabels([f"{task}\n{pool}" for task, pool in cells])
    axes.set_yscale("log")
    axes.set_ylabel("tasks/s (median, log)")
    axes.set_title("Worker throughput (ratio to celery-defaults)")
    axes.legend(fontsize=7)


def api_chart(axes: Any, api: dict[str, Any]) -> None:
    results = api["results"]
    width = 0.27
    for index, percentile in enumerate(("p50_ms", "p90_ms", "p99_ms")):
        xs = [n + index * width for n in range(len(results))]
        axes.bar(xs, [r[percentile]["median"] for r in results], width, label=percentile[:3])
    axes.set_xticks([n + width for n in range(len(results))])
    axes.set_xticklabels(
        [f"{r['endpoint'].split()[0]} c{r['connections']}\n{r['app']}" for r in results],
        fontsize=7,
    )
    axes.set_yscale("log")
    axes.set_ylabel("latency, ms (median, log)")
    axes.set_title("API latency percentiles")
    axes.legend(fontsize=7)


def _errors(figures: list[dict[str, Any]]) -> list[list[float]]:
    return [
        [f["median"] - f["min"] for f in figures],
        [f["max"] - f["median"] for f in figures],
    ]


def concurrency_chart(axes: Any, scaling: dict[str, Any]) -> None:
    curve = scaling["concurrency"]
    figures = [r["throughput"] for r in curve]
    axes.errorbar(
        [r["concurrency"] for r in curve],
        [f["median"] for f in figures],
        yerr=_errors(figures),
        marker="o",
        capsize=3,
        color=VARIANT_COLOURS["ledger"],
    )
    axes.set_xlabel("prefork concurrency")
    axes.set_ylabel("tasks/s")
    axes.set_ylim(bottom=0)
    axes.set_title("Ledger path throughput by concurrency")


def ledger_chart(axes: Any, scaling: dict[str, Any]) -> None:
    sizes = scaling["ledger"]
    rows = [r["final_rows"] for r in sizes]
    reconcile = [r["reconcile_seconds"] for r in sizes]
    lookups = [r["lookup_p99_ms"] for r in sizes]
    axes.errorbar(
        rows,
        [f["median"] for f in reconcile],
        yerr=_errors(reconcile),
        marker="o",
        capsize=3,
        label="reconcile pass, s",
    )
    axes.set_xscale("log")
    # A decade either side, so one size alone still has an axis.
    axes.set_xlim(min(rows) / 10, max(rows) * 10)
    axes.set_xlabel("finished rows in the ledger")
    axes.set_ylabel("reconcile pass, s")
    axes.set_ylim(bottom=0)
    twin = axes.twinx()
    twin.errorbar(
        rows,
        [f["median"] for f in lookups],
        yerr=_errors(lookups),
        marker="s",
        capsize=3,
        color="#55a868",
        label="GET p99 (one connection), ms",
    )
    twin.set_ylabel("GET /api/v1/tasks/{id} p99 alone, ms")
    twin.set_ylim(bottom=0)
    axes.set_title("Ledger size: reconcile and status lookups")
    handles = axes.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    axes.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper left")


def chart(document: dict[str, Any], png: Path) -> None:
    scenarios = document["scenarios"]
    figure, grid = plt.subplots(2, 2, figsize=(15, 10))
    panels = [
        ("worker", worker_chart, grid[0][0]),
        ("api", api_chart, grid[0][1]),
        ("scaling", concurrency_chart, grid[1][0]),
        ("scaling", ledger_chart, grid[1][1]),
    ]
    for name, draw, axes in panels:
        if name in scenarios:
            draw(axes, scenarios[name])
        else:
            axes.set_axis_off()
    figure.suptitle(f"bench {document['date']}: {document['command']}", fontsize=9)
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=110)
    plt.close(figure)


def write(document: dict[str, Any], png: Path, readme: Path) -> None:
    chart(document, png)
    update_readme(readme, markdown(document))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("figures", type=Path)
    parser.add_argument("--png", type=Path)
    parser.add_argument("--readme", type=Path, default=Path(__file__).with_name("README.md"))
    options = parser.parse_args()
    document = json.loads(options.figures.read_text())
    write(document, options.png or options.figures.with_name("report.png"), options.readme)


if __name__ == "__main__":
    main()
