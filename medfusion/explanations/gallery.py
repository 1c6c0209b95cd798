"""A browsable gallery of explanations: one PNG panel per image and an index.html that shows them all.

`save_panel_png` draws an input, its counterfactuals (one per target class) and its explanation maps overlaid on
the input as one PNG. `write_index` writes a self-contained index.html beside the panels: relative links, inline CSS
and JavaScript, no server and nothing fetched from the network, so the folder can be copied anywhere and opened
directly. Both write atomically (temporary file in the destination folder, then os.replace), so a killed run leaves
the old file or the new one, never half of one. Only numpy and matplotlib are needed: no JAX.
"""

import html
import io
import math
import numbers
import os
import posixpath
import textwrap
import urllib.parse
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from medfusion import plots

TILE_INCHES = 2.0  # each image tile: big enough to read a 28x28 image at a glance
MIN_DPI = 100
MAX_DPI = 300
MAP_CMAP = "inferno"
MASK_COLOUR = "cyan"
REQUIRED_KEYS = ("panel", "index", "label", "prediction", "vote_share", "correct", "entropy")


# ---------------------------------------------------------------------------------------------------------------------
# Panel PNG
# ---------------------------------------------------------------------------------------------------------------------


def _check_image(name: str, image) -> np.ndarray:
  """`image` as float HxWxC with C in {1, 3}, or a ValueError naming it."""
  image = np.asarray(image, dtype=np.float32)
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"{name} must be HxWxC with C = 1 or 3, got shape {image.shape}")
  return image


def _display(image: np.ndarray) -> np.ndarray:
  """[-1, 1] HxWxC -> [0, 1] HxW (grayscale) or HxWx3 (RGB), ready for imshow."""
  shown = np.clip((image + 1.0) / 2.0, 0.0, 1.0)
  return shown[..., 0] if shown.shape[-1] == 1 else shown


def _luminance(image: np.ndarray) -> np.ndarray:
  """[-1, 1] HxWxC -> [0, 1] HxW grayscale: the backdrop under a heat map, so the map's colours stand out."""
  shown = np.clip((image + 1.0) / 2.0, 0.0, 1.0)
  if shown.shape[-1] == 1:
    return shown[..., 0]
  return shown @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _wrap(text: str) -> str:
  """A tile title broken into lines that fit one tile's width."""
  return "\n".join(textwrap.wrap(text, width=28, break_long_words=True)) or text


def _show(axes, picture: np.ndarray, interpolation: str, **kwargs):
  """imshow without ticks; grayscale pictures get a fixed [0, 1] gray scale (no per-image stretching)."""
  if picture.ndim == 2 and "cmap" not in kwargs:
    kwargs.update(cmap="gray", vmin=0.0, vmax=1.0)
  artist = axes.imshow(picture, interpolation=interpolation, **kwargs)
  axes.set_xticks([])
  axes.set_yticks([])
  return artist


def _checked_maps(maps: Mapping[str, np.ndarray], height: int, width: int) -> dict[str, np.ndarray]:
  """Each map as float32 [H, W] (a trailing channel of 1 dropped), or a ValueError naming it."""
  checked = {}
  for name, values in maps.items():
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 3 and values.shape[-1] == 1:
      values = values[..., 0]
    if values.shape != (height, width):
      raise ValueError(f"maps[{name!r}] must have shape {(height, width)} to match the image, got {values.shape}")
    checked[str(name)] = values
  return checked


def _outline(axes, mask) -> None:
  """The lesion mask's outline, in cyan, over one tile."""
  if mask is not None and np.any(mask):
    axes.contour(np.asarray(mask, np.float32), levels=[0.5], colors=[MASK_COLOUR], linewidths=1.0)


def _draw_maps(figure, grid, columns: int, image, maps: dict, mask, interpolation: str) -> None:
  """The bottom row: each map over a grayscale copy of the input, and one colour bar for all."""
  backdrop = _luminance(image)
  for column, (name, values) in enumerate(maps.items()):
    axes = figure.add_subplot(grid[1, column])
    _show(axes, backdrop, interpolation)
    heat = _show(axes, values, interpolation, cmap=MAP_CMAP, vmin=0.0, vmax=1.0, alpha=0.6)
    _outline(axes, mask)
    axes.set_title(_wrap(name), fontsize=9)
  # The bar shows the colour map itself, not its translucent blend with the input.
  solid = ScalarMappable(norm=heat.norm, cmap=heat.get_cmap())
  bar = figure.colorbar(solid, cax=figure.add_subplot(grid[1, columns]))
  bar.set_label("map value (0 low \u2013 1 high)", fontsize=8)
  bar.ax.tick_params(labelsize=7)


def save_panel_png(
  path: str | os.PathLike,
  image,
  counterfactuals: Mapping[str, np.ndarray],
  maps: Mapping[str, np.ndarray],
  title: str,
  mask=None,
) -> None:
  """Draws one image's explanation as a PNG panel: the input, its counterfactuals and its maps over the input.

  The top row holds the input and one counterfactual per target class; the bottom row (present when there are maps)
  holds each map as a heat map over a grayscale copy of the input, on one shared [0, 1] colour scale whose bar sits
  at the right. Every tile is TILE_INCHES wide; small images are upscaled with nearest-neighbour interpolation so
  their pixels stay crisp.

  Args:
    path: where the PNG goes (folders are created).
    image: [H, W, C] float in [-1, 1], C = 1 (grayscale) or 3 (RGB).
    counterfactuals: target class name -> [H, W, C] image in [-1, 1], the input edited toward that class.
    maps: map name (e.g. "counterfactual_diff", "gradcam") -> [H, W] float in [0, 1].
    title: the panel's title, e.g. label, prediction and vote share; may span several lines.
    mask: optional [H, W] or [H, W, 1] ground-truth lesion mask, outlined on the input and on every map.
  """
  image = _check_image("image", image)
  height, width = image.shape[:2]
  counterfactuals = {str(k): _check_image(f"counterfactuals[{k!r}]", v) for k, v in counterfactuals.items()}
  for name, edited in counterfactuals.items():
    if edited.shape != image.shape:
      raise ValueError(f"counterfactuals[{name!r}] has shape {edited.shape}, the image {image.shape}")
  checked_maps = _checked_maps(maps, height, width)
  if mask is not None:
    mask = np.asarray(mask)
    mask = mask[..., 0] if mask.ndim == 3 else mask
    if mask.shape != (height, width):
      raise ValueError(f"mask must have shape {(height, width)} to match the image, got {mask.shape}")

  columns = max(1 + len(counterfactuals), len(checked_maps))
  rows = 2 if checked_maps else 1
  # Enough dots per tile that a large image is not shrunk; small images are scaled up by nearest neighbour.
  dpi = int(min(MAX_DPI, max(MIN_DPI, math.ceil(max(height, width) / TILE_INCHES))))
  interpolation = "nearest" if max(height, width) <= TILE_INCHES * dpi else "antialiased"
  title_lines = str(title).count("\n") + 1
  colour_bar_inches = 0.9 if checked_maps else 0.0
  figure = Figure(
    figsize=(columns * TILE_INCHES + colour_bar_inches + 0.2, rows * (TILE_INCHES + 0.35) + 0.25 * title_lines + 0.2),
    dpi=dpi,
    layout="constrained",
  )
  FigureCanvasAgg(figure)
  # the colour bar gets a narrow column of its own, so it never squeezes the tiles above it
  grid = figure.add_gridspec(rows, columns + 1, width_ratios=[1.0] * columns + [0.08 if checked_maps else 0.001])
  figure.suptitle(str(title), fontsize=11)

  axes = figure.add_subplot(grid[0, 0])
  _show(axes, _display(image), interpolation)
  _outline(axes, mask)
  axes.set_title("input" + (" (cyan: lesion mask)" if mask is not None and np.any(mask) else ""), fontsize=9)
  for column, (name, edited) in enumerate(counterfactuals.items(), start=1):
    axes = figure.add_subplot(grid[0, column])
    _show(axes, _display(edited), interpolation)
    axes.set_title(_wrap(f"counterfactual \u2192 {name}"), fontsize=9)
  if checked_maps:
    _draw_maps(figure, grid, columns, image, checked_maps, mask, interpolation)

  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=dpi)
  plots.write_atomically(path, lambda file: file.write(buffer.getvalue()))


# ---------------------------------------------------------------------------------------------------------------------
# index.html
# ---------------------------------------------------------------------------------------------------------------------


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_panel(where: str, panel) -> str:
  """The panel path, normalised and relative to out_dir, or a ValueError."""
  if not isinstance(panel, (str, os.PathLike)) or not str(panel):
    raise ValueError(f"{where}: key 'panel' must be a non-empty path relative to out_dir, got {panel!r}")
  panel = os.fspath(panel).replace(os.sep, "/")
  if posixpath.isabs(panel) or os.path.isabs(panel) or os.path.splitdrive(panel)[0]:
    raise ValueError(f"{where}: key 'panel' must be relative to out_dir, got absolute path {panel!r}")
  normal = posixpath.normpath(panel)
  if normal == ".." or normal.startswith("../") or normal == ".":
    raise ValueError(f"{where}: key 'panel' points outside out_dir: {panel!r}")
  return normal


def _extras(entry) -> dict:
  """The entry's other scalar fields (shown in the card); lists and arrays have no place in a card."""
  extras = {}
  for key, value in entry.items():
    if key in REQUIRED_KEYS:
      continue
    if isinstance(value, np.ndarray) and value.ndim == 0:
      value = value.item()
    if isinstance(value, np.generic):
      value = value.item()
    if isinstance(value, (str, bool, int, float)):
      extras[str(key)] = value
  return extras


def _checked_entry(position: int, entry) -> dict:
  """The entry with its required fields type-checked, or a ValueError naming the entry and the key."""
  if not isinstance(entry, Mapping):
    raise ValueError(f"entries[{position}] must be a dict, got {type(entry).__name__}")
  where = f"entries[{position}]" + (f" (index {entry['index']!r})" if "index" in entry else "")
  for key in REQUIRED_KEYS:
    if key not in entry:
      raise ValueError(f"{where}: missing key {key!r}")
  panel = _check_panel(where, entry["panel"])
  index = entry["index"]
  if not isinstance(index, (int, np.integer)) or isinstance(index, (bool, np.bool_)):
    raise ValueError(f"{where}: key 'index' must be an int, got {index!r}")
  for key in ("label", "prediction"):
    if not isinstance(entry[key], str):
      raise ValueError(f"{where}: key {key!r} must be a str, got {entry[key]!r}")
  vote_share = entry["vote_share"]
  if not _is_number(vote_share) or not 0.0 <= float(vote_share) <= 1.0:
    raise ValueError(f"{where}: key 'vote_share' must be a number in [0, 1], got {vote_share!r}")
  if not isinstance(entry["correct"], (bool, np.bool_)):
    raise ValueError(f"{where}: key 'correct' must be a bool, got {entry['correct']!r}")
  if not _is_number(entry["entropy"]):
    raise ValueError(f"{where}: key 'entropy' must be a number, got {entry['entropy']!r}")
  return {
    "panel": panel,
    "index": int(index),
    "label": entry["label"],
    "prediction": entry["prediction"],
    "vote_share": float(vote_share),
    "correct": bool(entry["correct"]),
    "entropy": float(entry["entropy"]),
    "extras": _extras(entry),
  }


def _format(value) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def _card(entry: dict) -> str:
  """One <figure> card: the panel (linked to the full-size PNG) and its caption."""
  e = html.escape
  url = e(urllib.parse.quote(entry["panel"], safe="/"))
  outcome = "correct" if entry["correct"] else "incorrect"
  rows = [
    ("label", entry["label"]),
    ("prediction", entry["prediction"]),
    ("vote share", f"{entry['vote_share']:.1%}"),
    ("entropy", f"{entry['entropy']:.3f}"),
    *((key, _format(value)) for key, value in entry["extras"].items()),
  ]
  details = "".join(f"<dt>{e(key)}</dt><dd>{e(value)}</dd>" for key, value in rows)
  alt = f"example {entry['index']}: label {entry['label']}, prediction {entry['prediction']}"
  return (
    f'<figure class="card {outcome}" data-index="{entry["index"]}" data-vote="{entry["vote_share"]!r}" '
    f'data-entropy="{entry["entropy"]!r}" data-correct="{int(entry["correct"])}">\n'
    f'  <figcaption><div class="head"><span class="idx">#{entry["index"]}</span>'
    f'<span class="badge">{outcome}</span></div><dl>{details}</dl></figcaption>\n'
    f'  <a class="panel" href="{url}"><img src="{url}" alt="{e(alt)}" '
    f"onload=\"this.dataset.loaded='1'\" onerror=\"this.dataset.loaded='0'\"></a>\n"
    "</figure>"
  )


_STYLE = """
:root { --ok: #1a7f37; --bad: #c62828; --line: #d0d7de; --muted: #57606a; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       background: #f6f8fa; }
header { position: sticky; top: 0; z-index: 1; background: #fff; border-bottom: 1px solid var(--line);
         padding: 10px 16px; }
h1 { font-size: 18px; margin: 0 0 4px; }
.counts { margin: 0 0 8px; }
.counts .ok { color: var(--ok); } .counts .bad { color: var(--bad); }
.controls { display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: center; }
.controls select { font: inherit; padding: 2px 4px; }
#shown, #status { color: var(--muted); }
#status[data-state="broken"] { color: var(--bad); font-weight: 600; }
main { display: flex; flex-wrap: wrap; gap: 14px; padding: 14px 16px; align-items: flex-start; }
h2.group { flex-basis: 100%; font-size: 16px; margin: 8px 0 0; padding-bottom: 4px;
           border-bottom: 2px solid var(--line); }
h2.group.incorrect { color: var(--bad); } h2.group.correct { color: var(--ok); }
.card { margin: 0; display: flex; gap: 12px; background: #fff; border: 1px solid var(--line);
        border-left: 5px solid var(--ok); border-radius: 6px; padding: 10px; max-width: 100%; }
.card.incorrect { border-left-color: var(--bad); }
.card[hidden] { display: none; }
figcaption { flex: 0 0 190px; }
.head { display: flex; justify-content: space-between; align-items: baseline; margin-bottom: 6px; }
.idx { font-weight: 700; font-size: 16px; }
.badge { font-size: 12px; font-weight: 600; color: #fff; background: var(--ok); border-radius: 10px; padding: 1px 8px; }
.incorrect .badge { background: var(--bad); }
dl { display: grid; grid-template-columns: auto 1fr; gap: 2px 8px; margin: 0; }
dt { color: var(--muted); } dd { margin: 0; font-weight: 600; overflow-wrap: break-word; min-width: 0; }
a.panel { min-width: 0; }
img { display: block; max-width: 100%; height: auto; }
#legend { background: #fff; border-bottom: 1px solid var(--line); padding: 8px 16px; }
#legend summary { font-weight: 600; cursor: pointer; }
dl.legend { grid-template-columns: minmax(120px, max-content) 1fr; margin: 6px 0; }
#legend table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
#legend caption { text-align: left; font-weight: 600; padding: 4px 0; }
#legend th, #legend td { border: 1px solid var(--line); padding: 2px 6px; text-align: right; }
#legend tr th:first-child { text-align: left; }
img[data-loaded="0"] { min-width: 240px; min-height: 80px; border: 2px dashed var(--bad); }
"""

_SCRIPT = """
(function () {
  var grid = document.getElementById('grid');
  var cards = Array.prototype.slice.call(grid.querySelectorAll('figure.card'));
  var sort = document.getElementById('sort'), show = document.getElementById('show');
  var group = document.getElementById('group'), zoom = document.getElementById('zoom');
  function num(card, key) { var v = parseFloat(card.dataset[key]); return isNaN(v) ? -Infinity : v; }
  var orders = {
    'vote-asc': function (a, b) { return num(a, 'vote') - num(b, 'vote'); },
    'vote-desc': function (a, b) { return num(b, 'vote') - num(a, 'vote'); },
    'entropy-desc': function (a, b) { return num(b, 'entropy') - num(a, 'entropy'); },
    'index-asc': function () { return 0; }
  };
  function render() {
    var order = orders[sort.value] || orders['index-asc'];
    var sorted = cards.slice().sort(function (a, b) {
      return order(a, b) || num(a, 'index') - num(b, 'index');
    });
    Array.prototype.forEach.call(grid.querySelectorAll('h2.group'), function (h) { h.remove(); });
    var groups = group.checked ? [['0', 'Incorrect', 'incorrect'], ['1', 'Correct', 'correct']] : [[null]];
    var shown = 0;
    groups.forEach(function (g) {
      var members = sorted.filter(function (c) { return g[0] === null || c.dataset.correct === g[0]; });
      var visible = members.filter(function (c) {
        return show.value === 'all' || (show.value === 'correct') === (c.dataset.correct === '1');
      });
      if (g[0] !== null && visible.length) {
        var h = document.createElement('h2');
        h.className = 'group ' + g[2];
        h.textContent = g[1] + ' (' + visible.length + ')';
        grid.appendChild(h);
      }
      members.forEach(function (c) {
        c.hidden = visible.indexOf(c) < 0;
        grid.appendChild(c);
      });
      shown += visible.length;
    });
    document.getElementById('shown').textContent = 'showing ' + shown + ' of ' + cards.length;
  }
  function resize() {
    var scale = parseFloat(zoom.value);
    Array.prototype.forEach.call(grid.querySelectorAll('img'), function (img) {
      img.style.width = img.naturalWidth ? Math.round(img.naturalWidth * scale) + 'px' : '';
    });
  }
  function checkImages() {
    var imgs = Array.prototype.slice.call(document.querySelectorAll('main img'));
    var broken = imgs.filter(function (img) { return !(img.complete && img.naturalWidth > 0); });
    imgs.forEach(function (img) { img.dataset.loaded = broken.indexOf(img) < 0 ? '1' : '0'; });
    var status = document.getElementById('status');
    status.dataset.loaded = String(imgs.length - broken.length);
    status.dataset.total = String(imgs.length);
    status.dataset.state = broken.length ? 'broken' : 'ok';
    status.textContent = broken.length
      ? broken.length + ' of ' + imgs.length + ' panels failed to load: ' +
        broken.map(function (img) { return img.getAttribute('src'); }).join(', ')
      : 'all ' + imgs.length + ' panels loaded';
    resize();
  }
  function readHash() {  // e.g. index.html#sort=vote-asc&show=incorrect&group=1&zoom=0.5
    location.hash.slice(1).split('&').forEach(function (pair) {
      var kv = pair.split('='), value = decodeURIComponent(kv[1] || '');
      var el = {sort: sort, show: show, zoom: zoom}[kv[0]];
      if (el && Array.prototype.some.call(el.options, function (o) { return o.value === value; })) el.value = value;
      if (kv[0] === 'group') group.checked = value === '1';
    });
  }
  function writeHash() {
    var hash = '#sort=' + sort.value + '&show=' + show.value + '&group=' + (group.checked ? 1 : 0) +
      '&zoom=' + zoom.value;
    if (history.replaceState) history.replaceState(null, '', hash);
  }
  [sort, show, group].forEach(function (el) { el.addEventListener('change', function () { render(); writeHash(); }); });
  zoom.addEventListener('change', function () { resize(); writeHash(); });
  readHash();
  render();
  if (document.readyState === 'complete') { checkImages(); } else { window.addEventListener('load', checkImages); }
})();
"""


def score_tables(metrics: Mapping, titles: Mapping[str, str], layer: str) -> dict[str, dict[str, dict]]:
  """The gallery's score tables from explain_metrics.json: per map (titled by `titles`, Grad-CAM's with `layer`) its
  mask scores and faithfulness areas, and per counterfactual method and degradation reference its valid flips."""
  tables = {}
  rows = {}
  for kind, title in titles.items():
    row = dict(metrics.get("maps", {}).get(kind, {}))
    row.update({f"{k} (judge)": v for k, v in metrics.get("faithfulness_judge", {}).get(kind, {}).items()})
    if row:
      rows[title.format(layer=layer)] = row
  if "random" in metrics.get("faithfulness_judge", {}):
    rows["random pixel order (reference)"] = {
      f"{k} (judge)": v for k, v in metrics["faithfulness_judge"]["random"].items()
    }
  if rows:
    tables["maps (mask scores on images with a lesion mask; deletion: lower is better, insertion: higher)"] = rows
  flips = {f"counterfactual, {m}": e for m, e in metrics.get("counterfactuals", {}).items()}
  flips.update(
    {f"reference: {k} at the strength that flips the judge": e for k, e in metrics.get("references", {}).items()}
  )
  keep = ("valid_flip_rate", "flip_rate_judge", "change_outside", "toward_prediction_kept_rate_judge")
  flips = {
    name: {k: v for k, v in e.items() if k in keep}
    | ({"valid_flip_area (budgets 0.01-0.30)": e["valid_flip_curve"]["area"]} if "valid_flip_curve" in e else {})
    for name, e in flips.items()
  }
  if flips:
    change = metrics.get("settings", {}).get("valid_change")
    tables[
      f"counterfactuals: valid flip = the judge calls the target AND mean change outside the lesion < {change}"
    ] = flips
  return tables


def _tables_html(tables: Mapping[str, Mapping[str, Mapping]]) -> str:
  e = html.escape
  out = []
  for caption, rows in tables.items():
    columns = list(dict.fromkeys(k for row in rows.values() for k in row))
    head = "".join(f"<th>{e(str(c))}</th>" for c in columns)
    body = "".join(
      f"<tr><th>{e(str(name))}</th>"
      + "".join(f"<td>{e(_format(row[c]) if c in row and row[c] is not None else '-')}</td>" for c in columns)
      + "</tr>"
      for name, row in rows.items()
    )
    out.append(f"<table><caption>{e(caption)}</caption><tr><th></th>{head}</tr>{body}</table>")
  return "\n".join(out)


def _legend_html(legend: Mapping[str, str] | None, tables) -> str:
  """The legend: what each map shows, what the colours mean, and the --evaluate scores."""
  if not legend and not tables:
    return ""
  e = html.escape
  items = "".join(f"<dt>{e(name)}</dt><dd>{e(text)}</dd>" for name, text in (legend or {}).items())
  colours = (
    "Each map is drawn over the input with the inferno colours, black (0) to yellow (1), min-max normalised per "
    "map: compare where maps point, not their brightness across maps. A cyan outline is the ground-truth lesion mask "
    "where the data has one."
  )
  return (
    f'<details id="legend" open><summary>Legend and scores</summary><p>{e(colours)}</p><dl class="legend">{items}</dl>'
    f"{_tables_html(tables or {})}</details>"
  )


def write_index(
  out_dir: str | os.PathLike,
  entries: Sequence[Mapping],
  legend: Mapping[str, str] | None = None,
  tables: Mapping[str, Mapping[str, Mapping]] | None = None,
) -> str:
  """Writes `out_dir/index.html`: every panel as a card, with counts and controls to sort, filter and group.

  The page needs no server and nothing from the network: links are relative to out_dir, and CSS and JavaScript are
  inline. Without JavaScript it still shows every card, in the given order. With it, the cards can be sorted (vote
  share either way, entropy, example index), filtered and grouped by correct / incorrect, and a status line reports
  whether every panel image loaded (each <img> gets data-loaded="1" or "0"). The view is kept in the URL fragment,
  e.g. index.html#sort=vote-asc&show=incorrect&group=1, so it survives a reload and can be linked to.

  Args:
    out_dir: the folder that holds the panels; index.html is written there (atomically).
    entries: one dict per image with "panel" (PNG path relative to out_dir), "index" (int), "label" (str),
      "prediction" (str), "vote_share" (float in [0, 1]), "correct" (bool) and "entropy" (float); any other scalar
      keys are shown in the card too.
    legend: map title -> what the map shows; with `tables`, a legend above the cards (with the colour scale).
    tables: caption -> row name -> column -> value (`score_tables` of explain_metrics.json).

  Returns:
    The path of the written index.html.

  Raises:
    ValueError: an entry lacks a key, has a value of the wrong type, or its panel path is absolute or leaves out_dir.
  """
  checked = [_checked_entry(position, entry) for position, entry in enumerate(entries)]
  total = len(checked)
  correct = sum(entry["correct"] for entry in checked)
  accuracy = f" ({correct / total:.1%})" if total else ""
  cards = "\n".join(_card(entry) for entry in checked) or "<p>No images.</p>"
  return _write_page(out_dir, total, correct, accuracy, _legend_html(legend, tables), cards)


def _write_page(out_dir, total: int, correct: int, accuracy: str, legend: str, cards: str) -> str:
  page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>medfusion explanations: {total} images</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
  <h1>medfusion explanations</h1>
  <p class="counts" id="counts" data-total="{total}" data-correct="{correct}"><b>{total}</b> images &middot;
    <b class="ok">{correct}</b> correct{accuracy} &middot; <b class="bad">{total - correct}</b> incorrect</p>
  <div class="controls">
    <label>Sort by <select id="sort">
      <option value="index-asc">example index</option>
      <option value="vote-asc">vote share, least certain first</option>
      <option value="vote-desc">vote share, most certain first</option>
      <option value="entropy-desc">entropy, highest first</option>
    </select></label>
    <label>Show <select id="show">
      <option value="all">all</option>
      <option value="incorrect">incorrect only</option>
      <option value="correct">correct only</option>
    </select></label>
    <label><input type="checkbox" id="group"> group by correct / incorrect</label>
    <label>Panel size <select id="zoom">
      <option value="1">100%</option>
      <option value="0.75">75%</option>
      <option value="0.5">50%</option>
    </select></label>
    <span id="shown"></span>
    <span id="status" data-state="pending">panels loading&hellip;</span>
  </div>
</header>
{legend}
<main id="grid">
{cards}
</main>
<script>{_SCRIPT}</script>
</body>
</html>
"""
  path = os.path.join(os.fspath(out_dir), "index.html")
  plots.write_atomically(path, lambda file: file.write(page.encode("utf-8")))
  return path
