"""A sequence model's saliency is drawn as line plots (the series over its attribution per step),
not as an image one pixel high."""

from __future__ import annotations

import re

import numpy as np
import pytest

from danlu.config import ExplainConfig
from danlu.evaluate._explain import _sequence_plot, explain_section

pytestmark = pytest.mark.filterwarnings("error")


def test_gunpoint_saliency_is_a_line_per_row_over_its_attribution(make_eval_data) -> None:
    data = make_eval_data(
        source="builtin:gunpoint",
        model={"type": "cnn1d", "channels": [4], "kernel_sizes": [5]},
        epochs=2,
        split={"by": "column", "column": "split", "val": 0.2},
    )
    assert data.model.sequence_shape == (1, 150)
    section = explain_section(data, ExplainConfig(samples=20, top_k=1))
    names = list(section.figures)
    assert "Saliency: inputs and their attributions" not in names  # no 1 × 150 image strip
    assert not any("importance" in name.lower() and "step" not in name for name in names)
    saliency = section.figures[next(n for n in names if n.startswith("Saliency: each series"))]
    # 3 most + 3 least confident rows: a band and a line over the 150 steps each (matplotlib
    # drops the points of a smooth stretch, so a line has fewer vertices than steps)
    assert saliency.count("<image") == 6 + 1  # and the colour bar
    lines = re.findall(r'<g id="line2d_\d+">\s*<path d="([^"]+)"', saliency)
    assert sum(20 <= path.count("L ") <= 149 for path in lines) == 6
    steps = section.figures["Mean |attribution| per step over the explained rows"]
    assert steps.lstrip().startswith("<svg") and "<image" not in steps
    assert len(section.data["importance"]) == 150


def test_several_channels_share_one_band_per_row() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3 * 40))
    attr = np.zeros_like(x)
    attr[1, 40 + 10] = 2.0  # channel 1, step 10: the only attribution of row 1
    svg = _sequence_plot(
        x, attr, (3, 40), [("most confident", 1), ("least confident", 2)], ["a\nb", "c\nd"]
    )
    assert svg.count("<image") == 2 + 1  # one band per row, the channels' attributions summed
    lines = re.findall(r'<g id="line2d_\d+">\s*<path d="([^"]+)"', svg)
    assert sum(path.count("L ") == 39 for path in lines) >= 6  # 3 series × 2 rows
    assert "series 2" in svg  # the legend names the channels
