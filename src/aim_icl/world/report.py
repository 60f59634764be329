"""The demo's summary: one line per (task, mode, shots) with every metric and the costs, and one overview plot."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from aim_icl.core.modes import MODE_TABLE
from aim_icl.eval.task import Task

COST = (
    ("prompt_tokens", "tokens", ",.0f"),
    ("peak_memory_mb", "peak MB", ",.0f"),
    ("latency_ms", "ms/query", ".1f"),
)


def _cells(rows: list[dict]) -> dict[tuple, dict]:
    cells: dict[tuple, dict] = defaultdict(dict)
    for r in rows:
        cell = cells[(r["task"], r["mode"], r["shots"])]
        cell.update({k: r[k] for k, _, _ in COST}, fits=r.get("fits", True), **{r["metric"]: r["value"]})
    return cells


def summary_table(rows: list[dict]) -> str:
    """A plain-text table: task, mode, shots, each metric of the task, then prompt tokens, peak memory, latency."""
    lines = []
    by_task = defaultdict(list)
    for key, cell in _cells(rows).items():
        by_task[key[0]].append((key, cell))
    for task, cells in by_task.items():
        metrics = list(dict.fromkeys(r["metric"] for r in rows if r["task"] == task))
        header = ["mode", "shots", *metrics, *(label for _, label, _ in COST)]
        body = [
            [
                mode,
                str(shots),
                *(_fit(cell, f"{cell[m]:.3f}") for m in metrics),
                *("-" if math.isnan(cell[k]) else format(cell[k], f) for k, _, f in COST),
            ]
            for (_, mode, shots), cell in cells
        ]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        lines += ["", task]
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [header, *body]]
    return "\n".join(lines[1:])


def shots_tables(rows: list[dict]) -> str:
    """Markdown: per task and metric, one row per mode and one column per shot count (the README's layout).

    A cell whose prompt did not fit the model's context reads "does not fit"."""
    blocks = []
    for task in dict.fromkeys(r["task"] for r in rows):
        for metric in dict.fromkeys(r["metric"] for r in rows if r["task"] == task):
            cells = {(r["mode"], r["shots"]): r for r in rows if (r["task"], r["metric"]) == (task, metric)}
            modes = list(dict.fromkeys(mode for mode, _ in cells))
            shots = sorted({k for _, k in cells})
            lines = [f"**{task}**, {metric}", "", "| mode | " + " | ".join(map(str, shots)) + " |"]
            lines.append("|---|" + "---:|" * len(shots))
            for mode in modes:
                values = [_shown(cells.get((mode, k))) for k in shots]
                lines.append(f"| {mode} | " + " | ".join(values) + " |")
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


EXAMPLE_SHOTS = 4  # the shot count whose example the demo prints (or the nearest the mode ran)


def examples(rows: list[dict], task: Task, shots: int = EXAMPLE_SHOTS) -> str:
    """Markdown: one example per mode, the same query in each (the task's first): its demos' texts, the prompt's
    query, the generated answer and the right one, so a reader sees generation and not only scores."""
    items = {item.id: item for item in task.test}
    lines = [f"Examples ({task.name}: the first query, generated answers):", ""]
    for mode in dict.fromkeys(r["mode"] for r in rows if r["task"] == task.name):
        ran = [r for r in rows if (r["task"], r["mode"]) == (task.name, mode) and r.get("example")]
        if not ran:
            continue
        row = min(ran, key=lambda r: (abs(r["shots"] - shots), r["shots"]))
        example, item = row["example"], items[row["example"]["id"]]
        demos = [f"`{task.demo(d).text}`" for d in item.support[: row["shots"]]]
        shown = f"{row['shots']} demos {_how(mode)}: {' '.join(demos)}; " if demos else ""
        right = example["answers"][0]
        verdict = "right" if example["prediction"] in example["answers"] else f"wrong; right: `{right}`"
        lines.append(
            f"- **{mode}**: {shown}query `<image> {task.query_text(item)}` → `{example['prediction']}` ({verdict})"
        )
    return "\n".join(lines)


def _how(mode: str) -> str:
    spec = MODE_TABLE[mode]
    return "with their images" if spec.demo_images else "as fused tokens" if spec.fused else "as text"


def _shown(row: dict | None) -> str:
    if row is None:
        return ""
    return "does not fit" if row.get("fits") is False else f"{row['value']:.2f}"


def _fit(cell: dict, shown: str) -> str:
    return shown if cell["fits"] else "does not fit"


def overview_plot(rows: list[dict], path: Path, chance: dict[str, float] | None = None) -> Path:
    """Each task's headline metric and the prompt length against shots, one line per mode; `chance[task]`: the
    score of a uniform guess among the task's candidates (a dashed line)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from aim_icl.eval.report import draw_metric, spaced

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig = Figure(figsize=(4.2 * (len(tasks) + 1), 3.6))
    FigureCanvasAgg(fig)
    spaced(fig)
    axes = fig.subplots(1, len(tasks) + 1, squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        headline = _headline_rows(rows, task)
        draw_metric(ax, headline, "value", headline[0]["metric"], (chance or {}).get(task))
        ax.set_title(task)
        ax.set_ylim(-0.02, 1.1)
    draw_metric(axes[-1], _headline_rows(rows, tasks[0]), "prompt_tokens", "prompt tokens")
    axes[-1].set_title(f"{tasks[0]}: prompt length")
    fig.savefig(path, dpi=110)
    return path


def _headline_rows(rows: list[dict], task: str) -> list[dict]:
    """The task's rows of its first (headline) metric: one per (mode, shots)."""
    headline = next(r["metric"] for r in rows if r["task"] == task)
    return [r for r in rows if (r["task"], r["metric"]) == (task, headline)]
