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

from aim_icl.core.aim import MODES

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
    """One PNG per (task, metric) and one memory PNG per task (Agg canvas: no display, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = []
    by_task = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    for task, task_rows in by_task.items():
        metrics = list(dict.fromkeys(r["metric"] for r in task_rows))
        panels = [(m, "value", m) for m in metrics] + [("memory", "peak_memory_mb", "peak memory (MB)")]
        for name, field, label in panels:
            selected = [r for r in task_rows if r["metric"] == (metrics[0] if name == "memory" else name)]
            fig = Figure(figsize=(5, 3.5))
            FigureCanvasAgg(fig)
            draw_metric(fig.add_subplot(), selected, field, label)
            fig.suptitle(task)
            fig.tight_layout()
            path = directory / f"{task}_{name}.png"
            fig.savefig(path, dpi=110)
            paths.append(path)
    return paths


def draw_metric(ax, rows: list[dict], field: str, label: str) -> None:
    """`field` against shots, one line per mode starting at the zero-shot point (error bars: std of values)."""
    with_std = field == "value"
    zero = next((r for r in rows if r["shots"] == 0), None)
    modes = [m for m in MODES if m != "zero" and any(r["mode"] == m for r in rows)]
    for mode in modes:
        points = ([zero] if zero else []) + sorted(
            (r for r in rows if r["mode"] == mode), key=lambda r: r["shots"]
        )
        ys = [p[field] for p in points]
        errs = [p["std"] if with_std else 0.0 for p in points]
        ax.errorbar([p["shots"] for p in points], ys, yerr=errs, marker="o", capsize=3, label=mode)
    if zero and not modes:
        ax.plot([0], [zero[field]], marker="o", label="zero")
    ax.set_xticks(sorted({r["shots"] for r in rows}))
    ax.set_xlabel("shots")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend()


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
