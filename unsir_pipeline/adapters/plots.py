"""Figures logged with every unlearning run: per-class accuracy before and after, and the
confusion matrices of both models."""

from __future__ import annotations

import numpy as np

# Figures are built on matplotlib's object API, never through pyplot: pyplot keeps every figure
# alive until it is closed, so a long-lived worker drawing two per run would grow without bound,
# and it would pick a display backend, which servers and workers do not have.
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont
from matplotlib.ft2font import FT2Font


def tick_labels(class_names: list[str]) -> list[str]:
    """Class names as ticks, except a name the plotting font has no glyph for (a CJK class name
    in DejaVu Sans), which would be drawn as empty boxes: it shows as its index, ``#7``, which
    the run's evaluation.json and the evidence report (HTML, any script) name in full."""
    drawable = FT2Font(findfont(FontProperties())).get_charmap()
    return [
        name if all(ord(ch) in drawable for ch in name if not ch.isspace()) else f"#{index}"
        for index, name in enumerate(class_names)
    ]


def per_class_accuracy_figure(
    class_names: list[str], before: list[float], after: list[float], forgotten: list[int]
) -> Figure:
    fig = Figure(figsize=(max(6, 0.6 * len(class_names)), 3.5))
    ax = fig.subplots()
    x = np.arange(len(class_names))
    ax.bar(x - 0.2, before, width=0.4, label="before (parent)", color="#8da0cb")
    ax.bar(x + 0.2, after, width=0.4, label="after (unlearned)", color="#fc8d62")
    for c in forgotten:
        ax.axvspan(c - 0.5, c + 0.5, color="#e5e5e5", zorder=0)
    ax.set_xticks(x, tick_labels(class_names), rotation=45 if len(class_names) > 12 else 0)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.set_title("Per-class accuracy (forgotten classes shaded)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def confusion_figure(class_names: list[str], before: list[list[int]], after: list[list[int]]) -> Figure:
    fig = Figure(figsize=(9, 4.2))
    axes = fig.subplots(1, 2)
    for ax, matrix, title in zip(axes, (before, after), ("parent", "unlearned"), strict=True):
        ax.imshow(np.asarray(matrix), cmap="Blues")
        ax.set_title(f"confusion, {title}")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ticks, labels = np.arange(len(class_names)), tick_labels(class_names)
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.set_yticks(ticks, labels, fontsize=7)
    fig.tight_layout()
    return fig
