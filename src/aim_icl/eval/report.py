"""Results as files: `results.json` (the rows), `results.md` (a Markdown table) and PNG plots per task:
`<task>_<metric>.png` (metric vs shots, one line per mode, error bars = std over trials) and `<task>_memory.png`
(peak memory vs shots per mode). Every mode's line starts at the zero-shot point.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path

from aim_icl.core.modes import MODES

logger = logging.getLogger(__name__)


def write_report(rows: list[dict], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "results.json", directory / "results.md"]
    _write_atomic(written[0], json.dumps(_json_safe(rows), indent=2) + "\n")
    _write_atomic(written[1], markdown_table(rows) + "\n")
    try:
        written += plot_rows(rows, directory)
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'aim-icl[eval]'): no plots written")
    return written


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| task | mode | shots | metric | value | trials | prompt tokens | peak memory (MB) | latency (ms) | queries/s |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        value = f"{_num(r['value'], 4)} ± {_num(r['std'], 4)}" if r["trials"] > 1 else _num(r["value"], 4)
        value = "does not fit" if r.get("fits") is False else value
        cells = [r["task"], r["mode"], str(r["shots"]), r["metric"], value, str(r["trials"])]
        cells += [_num(r["prompt_tokens"], 1), _num(r["peak_memory_mb"], 0), _num(r["latency_ms"], 1)]
        cells.append(_num(r.get("throughput_qps", float("nan")), 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_rows(rows: list[dict], directory: Path) -> list[Path]:
    """One PNG per task: a panel per metric and one of peak memory (Agg canvas: no display, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = []
    by_task = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    for task, task_rows in by_task.items():
        metrics = list(dict.fromkeys(r["metric"] for r in task_rows))
        panels = [(m, "value", m) for m in metrics] + [(metrics[0], "peak_memory_mb", "peak memory (MB)")]
        fig = Figure(figsize=(4.2 * len(panels), 3.4))
        FigureCanvasAgg(fig)
        spaced(fig)
        for ax, (metric, field, label) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
            draw_metric(ax, [r for r in task_rows if r["metric"] == metric], field, label)
        fig.suptitle(task)
        path = directory / f"{task}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def draw_metric(ax, rows: list[dict], field: str, label: str, chance: float | None = None) -> None:
    """`field` against shots (a log2 axis, 0 included), one line per mode starting at the zero-shot point (error
    bars: std of values); a mode whose prompt stops fitting the context is marked "does not fit" where it stops;
    `chance`: a dashed line at that value."""
    with_std = field == "value"
    zero = next((r for r in rows if r["shots"] == 0), None)
    modes = [m for m in MODES if m != "zero" and any(r["mode"] == m for r in rows)]
    for mode in modes:
        points = ([zero] if zero else []) + sorted(
            (r for r in rows if r["mode"] == mode), key=lambda r: r["shots"]
        )
        fitting = [p for p in points if p.get("fits", True)]
        errs = [p["std"] if with_std else 0.0 for p in fitting]
        line = ax.errorbar(
            [p["shots"] for p in fitting],
            [p[field] for p in fitting],
            yerr=errs,
            marker="o",
            capsize=3,
            label=mode,
        )
        stop = next((p for p in points if p.get("fits") is False), None)
        if stop is not None and fitting:
            colour = line.lines[0].get_color()
            ax.plot(
                [stop["shots"]], [fitting[-1][field]], marker="x", markersize=9, color=colour, linestyle=""
            )
            ax.annotate("does not fit", (stop["shots"], fitting[-1][field]), textcoords="offset points",
                        xytext=(0, 7), ha="center", fontsize=7, color=colour)  # fmt: skip
    if zero and not modes:
        ax.plot([0], [zero[field]], marker="o", label="zero")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
    shots = sorted({r["shots"] for r in rows})
    ax.set_xscale("symlog", base=2, linthresh=1, linscale=0.5)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlim(min(shots) - 0.3, max(shots) * 1.25 + 0.3)
    ax.margins(y=0.12)  # room for the "does not fit" notes
    ax.set_xlabel("shots")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def spaced(fig) -> None:
    """Room for titles and labels around side-by-side panels (a layout engine costs 3x the drawing): margins in
    inches, so a narrow figure keeps room for the y label and five-digit tick labels (a fraction of the width
    clipped the label of a two-panel figure)."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=0.95 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.5 / height, wspace=0.35
    )


def _num(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _json_safe(value):
    """NaN (an undefined metric, e.g. ROC-AUC on one class) becomes null, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
