"""An evaluation plot keeps every axis label inside the image, however few panels it has."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from aim_icl.eval.report import plot_rows  # noqa: E402


@pytest.mark.parametrize("metrics", [("vqa_accuracy",), ("roc_auc", "likelihood_accuracy", "exact_match")])
def test_axis_labels_and_tick_labels_fit_in_the_figure(metrics, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    rows = [
        dict(task="t", mode=mode, shots=k, metric=metric, value=0.51234 + 1e-5 * k, std=1e-5, trials=3,
             peak_memory_mb=12345.0 + 1000 * k, fits=True)
        for mode, shots in (("zero", [0]), ("text", [2, 4, 8]), ("aim", [2, 4, 8]))
        for k in shots
        for metric in metrics
    ]  # fmt: skip
    plot_rows(rows, tmp_path)
    (fig,) = drawn
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    width = fig.bbox.width
    for ax in fig.axes:
        for artist in (ax.yaxis.label, ax.xaxis.label, *ax.get_yticklabels()):
            box = artist.get_window_extent(renderer)
            assert box.x0 >= 0 and box.x1 <= width and box.y0 >= 0, artist.get_text()
