"""PNG plots of evaluation results, drawn off-screen and written atomically.

Figures are built with matplotlib's object API on the Agg canvas, so no display is needed and pyplot's global
state is never touched. Each PNG is written by writers.write_atomically, so a killed process leaves either the old
file or the new one, never half a PNG.
"""

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from medfusion.writers import write_atomically


def _new_axes(xlabel: str, ylabel: str, title: str):
  """A fresh Agg figure with one labelled, gridded axes."""
  figure = Figure(figsize=(6, 4.5), dpi=120)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  axes.set_xlabel(xlabel)
  axes.set_ylabel(ylabel)
  axes.set_title(title)
  axes.grid(True, alpha=0.3)
  return figure, axes


def _save_atomically(figure: Figure, path: str | os.PathLike) -> None:
  """Writes `figure` as a PNG at `path` (write_atomically)."""
  write_atomically(path, lambda file: figure.savefig(file, format="png", bbox_inches="tight"))


def save_risk_coverage_png(
  path: str | os.PathLike, curves: Mapping[str, tuple[ArrayLike, ArrayLike]], title: str
) -> None:
  """Plots one risk-coverage curve per name (e.g. 'vote', 'mean'), with each curve's AURC in the legend.

  Args:
    path: where the PNG goes.
    curves: name -> (coverage [N], risk [N]) as returned by `medfusion.metrics.risk_coverage`.
    title: the plot title.
  """
  figure, axes = _new_axes("coverage", "risk (error rate)", title)
  for name, (coverage, risk) in curves.items():
    coverage, risk = np.asarray(coverage), np.asarray(risk)
    if coverage.shape != risk.shape:
      raise ValueError(f"curves['{name}']: coverage {coverage.shape} and risk {risk.shape} differ in shape")
    axes.plot(coverage, risk, label=f"{name} (AURC {risk.mean():.4f})")
  axes.set_xlim(0, 1)
  axes.set_ylim(bottom=0)
  if curves:
    axes.legend()
  _save_atomically(figure, path)


def save_line_plot_png(
  path: str | os.PathLike,
  x: ArrayLike,
  ys: Mapping[str, ArrayLike],
  xlabel: str,
  ylabel: str,
  title: str,
  logx: bool = False,
) -> None:
  """Plots named series against a shared x (e.g. accuracy against number of draws) as one PNG.

  Args:
    path: where the PNG goes.
    x: [M] shared x values.
    ys: name -> [M] y values.
    xlabel: x-axis label.
    ylabel: y-axis label.
    title: the plot title.
    logx: whether the x axis is logarithmic; its ticks are then labelled with the x values themselves.
  """
  x = np.asarray(x)
  figure, axes = _new_axes(xlabel, ylabel, title)
  for name, y in ys.items():
    y = np.asarray(y, dtype=np.float64)  # None (no data) becomes NaN: a gap in the line
    if y.shape != x.shape:
      raise ValueError(f"ys['{name}'] must have shape {x.shape} to match x, got {y.shape}")
    axes.plot(x, y, marker="o", markersize=3, label=name)
  if logx:
    axes.set_xscale("log")
    axes.set_xticks(x, [f"{v:g}" for v in x])
    axes.minorticks_off()
  if ys:
    axes.legend()
  _save_atomically(figure, path)


def save_xy_plot_png(
  path: str | os.PathLike,
  curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
  xlabel: str,
  ylabel: str,
  title: str,
  point_labels: Mapping[str, Sequence[str]] | None = None,
) -> None:
  """Plots named (x, y) series that do not share x (e.g. accuracy against cost for several rules) as one PNG;
  `point_labels[name]` writes a label beside each point of that series (e.g. the setting that produced it)."""
  figure, axes = _new_axes(xlabel, ylabel, title)
  for name, (x, y) in curves.items():
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
      raise ValueError(f"curves['{name}']: x {x.shape} and y {y.shape} differ in shape")
    line = axes.plot(x, y, marker="o", markersize=3, label=name)[0]
    for text, xi, yi in zip((point_labels or {}).get(name, ()), x, y, strict=False):
      axes.annotate(text, (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=6, color=line.get_color())
  if curves:
    axes.legend()
  _save_atomically(figure, path)


def save_labelled_grid_png(path: str | os.PathLike, pixels: np.ndarray, group_labels: Sequence[str]) -> None:
  """A uint8 image grid [H, W, C] made of equal blocks of rows, one per group (e.g. the samples of one class), with
  each block's label on its left."""
  height, width = pixels.shape[:2]
  figure = Figure(figsize=(width / 100 + 1.6, height / 100 + 0.2), dpi=100)
  FigureCanvasAgg(figure)
  axes = figure.add_axes((1.5 / (width / 100 + 1.6), 0.0, width / 100 / (width / 100 + 1.6), 1.0))
  gray = pixels.shape[-1] == 1
  axes.imshow(pixels[..., 0] if gray else pixels, cmap="gray" if gray else None, vmin=0, vmax=255)
  block = height / len(group_labels)
  axes.set_yticks([block * (i + 0.5) for i in range(len(group_labels))], list(group_labels))
  axes.set_xticks([])
  for side in axes.spines.values():
    side.set_visible(False)
  _save_atomically(figure, path)


def save_confusion_matrix_png(path: str | os.PathLike, confusion: ArrayLike, class_names, title: str) -> None:
  """The confusion matrix (rows: true class, columns: predicted) as counts and row-normalised (recall per class),
  side by side, each cell labelled."""
  confusion = np.asarray(confusion, dtype=np.float64)
  rows = confusion.sum(axis=1, keepdims=True)
  normalised = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
  size = 3.0 + 0.55 * len(class_names)
  figure = Figure(figsize=(2 * size, size), dpi=120)
  FigureCanvasAgg(figure)
  for i, (values, label, fmt) in enumerate(((confusion, "counts", ".0f"), (normalised, "row-normalised", ".2f"))):
    axes = figure.add_subplot(1, 2, i + 1)
    axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{title} ({label})")
    for r in range(len(class_names)):
      for c in range(len(class_names)):
        color = "white" if normalised[r, c] > 0.5 else "black"
        axes.text(c, r, format(values[r, c], fmt), ha="center", va="center", color=color, fontsize=8)
  figure.tight_layout()
  _save_atomically(figure, path)
