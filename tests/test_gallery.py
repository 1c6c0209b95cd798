"""The explanation gallery: panel PNGs, the index.html writer, and the page as a headless browser renders it."""

import html.parser
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from medfusion.explanations import gallery

MAP_NAMES = ("counterfactual_diff", "error_diff", "gradcam", "intensity")


def _example(size: int, channels: int, seed: int = 0):
  """A smooth image in [-1, 1], two counterfactuals and four [0, 1] maps, all made by hand."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  image = np.sin(6 * xx)[..., None] * np.cos(5 * yy)[..., None] * np.ones(channels)
  counterfactuals = {name: np.clip(image + rng.normal(0, 0.3, image.shape), -1, 1) for name in ("normal", "tumour")}
  blob = np.exp(-((xx - 0.4) ** 2 + (yy - 0.5) ** 2) / 0.02)
  maps = dict(zip(MAP_NAMES, (blob, blob.T, blob[::-1], (image.mean(-1) + 1) / 2), strict=True))
  return image.astype(np.float32), counterfactuals, maps


def _entry(index: int, panel: str, correct: bool = True, **extra) -> dict:
  return {
    "panel": panel,
    "index": index,
    "label": "normal",
    "prediction": "normal" if correct else "tumour",
    "vote_share": 0.5 + index / 100,
    "correct": correct,
    "entropy": 0.1 * index,
    **extra,
  }


# --- panels ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
def test_panel_png_grayscale_and_rgb(tmp_path, size, channels):
  image, counterfactuals, maps = _example(size, channels)
  path = tmp_path / "panels" / "0007.png"
  gallery.save_panel_png(path, image, counterfactuals, maps, "label: normal\nprediction: normal  vote share: 75%")
  with Image.open(path) as png:
    png.load()
    width, height = png.size
  # 4 tiles across (input + 2 counterfactuals, then 4 maps), 2 rows, a colour bar and a title: about 16:9.
  assert 1.5 < width / height < 2.1, (width, height)
  assert width >= 4 * 180, "tiles of about 2 inches at >= 100 dpi, so a 28x28 image is readable at a glance"
  assert os.listdir(path.parent) == ["0007.png"], "no temporary file is left behind"

  gallery.save_panel_png(tmp_path / "bare.png", image, counterfactuals, {}, "no maps")
  with Image.open(tmp_path / "bare.png") as png:
    bare_width, bare_height = png.size
  assert bare_height < 0.7 * height, "without maps the panel has one row"
  assert bare_width / bare_height > width / height


def test_panel_png_upscales_small_images_by_nearest_neighbour(tmp_path):
  """A 2x2 checkerboard drawn 2 inches wide must come out as four flat blocks, not a blur."""
  image = np.array([[-1.0, 1.0], [1.0, -1.0]], np.float32)[..., None]
  gallery.save_panel_png(tmp_path / "p.png", image, {}, {}, "checkerboard")
  pixels = np.asarray(Image.open(tmp_path / "p.png").convert("L"), dtype=np.int32)
  values = np.unique(pixels)
  gray_levels = values[(values > 10) & (values < 245)]
  in_between = np.isin(pixels, gray_levels).mean()
  assert in_between < 0.1, f"{in_between:.1%} of pixels are neither black nor white: the image was smoothed"


def test_panel_png_rejects_bad_shapes(tmp_path):
  image, counterfactuals, maps = _example(28, 1)
  with pytest.raises(ValueError, match="image must be HxWxC"):
    gallery.save_panel_png(tmp_path / "a.png", image[..., 0], counterfactuals, maps, "t")
  with pytest.raises(ValueError, match="C = 1 or 3"):
    gallery.save_panel_png(tmp_path / "a.png", np.zeros((28, 28, 2)), {}, {}, "t")
  with pytest.raises(ValueError, match=r"maps\['gradcam'\]"):
    gallery.save_panel_png(tmp_path / "a.png", image, counterfactuals, {**maps, "gradcam": np.zeros((14, 14))}, "t")
  with pytest.raises(ValueError, match=r"counterfactuals\['tumour'\]"):
    gallery.save_panel_png(tmp_path / "a.png", image, {"tumour": np.zeros((28, 28, 3))}, maps, "t")
  assert not list(tmp_path.iterdir())


def test_panel_png_outlines_the_lesion_mask(tmp_path):
  image, counterfactuals, maps = _example(28, 1)
  mask = np.zeros((28, 28, 1), np.uint8)
  mask[10:14, 10:14] = 1
  gallery.save_panel_png(tmp_path / "plain.png", image, counterfactuals, maps, "t")
  gallery.save_panel_png(tmp_path / "mask.png", image, counterfactuals, maps, "t", mask)
  plain, outlined = (
    np.asarray(Image.open(tmp_path / f"{n}.png").convert("RGB")).astype(int) for n in ("plain", "mask")
  )
  cyan = (outlined[..., 0] < 80) & (outlined[..., 1] > 180) & (outlined[..., 2] > 180)
  assert cyan.sum() > 20 and not ((plain[..., 0] < 80) & (plain[..., 1] > 180) & (plain[..., 2] > 180)).any()
  with pytest.raises(ValueError, match="mask must have shape"):
    gallery.save_panel_png(tmp_path / "bad.png", image, counterfactuals, maps, "t", np.zeros((14, 14)))


# --- index.html ------------------------------------------------------------------------------------------------------


def test_index_links_every_panel_relatively_escapes_and_counts(tmp_path):
  entries = [
    _entry(0, "panels/0000.png", margin=0.123456, checkpoint="step_<900>"),
    _entry(1, "panels/with space.png", correct=False),
    {**_entry(2, "0002.png"), "label": "<script>alert(1)</script>", "prediction": 'a "quoted" & <b>'},
    _entry(3, "./panels/0003.png", ignored_list=[1, 2, 3]),
  ]
  path = gallery.write_index(tmp_path, entries)
  assert path == os.path.join(str(tmp_path), "index.html")
  page = open(path, encoding="utf-8").read()

  for url in ("panels/0000.png", "panels/with%20space.png", "0002.png", "panels/0003.png"):
    assert f'href="{url}"' in page and f'src="{url}"' in page, url
  assert "http://" not in page and "https://" not in page and 'src="//' not in page, "no external assets"
  assert "<script>alert(1)</script>" not in page
  assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
  assert "a &quot;quoted&quot; &amp; &lt;b&gt;" in page
  assert "step_&lt;900&gt;" in page and "0.1235" in page, "extra scalar keys are shown"
  assert "ignored_list" not in page, "non-scalar extras are left out"
  assert 'data-total="4" data-correct="3"' in page
  assert (
    "<b>4</b> images" in page and '<b class="ok">3</b> correct' in page and '<b class="bad">1</b> incorrect' in page
  )
  for control in ('id="sort"', 'value="vote-asc"', 'value="vote-desc"', 'value="index-asc"', 'id="show"'):
    assert control in page, control
  assert 'id="group"' in page and 'value="incorrect"' in page
  assert page.count('<figure class="card') == 4
  assert os.listdir(tmp_path) == ["index.html"], "no temporary file is left behind"


def test_index_legend_and_score_tables(tmp_path):
  metrics = {
    "settings": {"valid_change": 0.05},
    "maps": {
      "grad_cam": {"mask_size_precision": 0.41, "pointing_game_0px": 0.5},
      "blob": {"mask_size_precision": 0.47},
    },
    "faithfulness_judge": {"grad_cam": {"deletion_auc": 0.2}, "random": {"deletion_auc": 0.6}},
    "counterfactuals": {"ddim_inversion": {"valid_flip_rate": 0.97, "flip_rate_judge": 1.0, "extra": 3}},
    "references": {"blur": {"valid_flip_rate": 0.0, "flip_rate_judge": 1.0}},
  }
  titles = {"grad_cam": "Grad-CAM ({layer})", "blob": "blob <detector>"}
  tables = gallery.score_tables(metrics, titles, "stage3")
  maps_table, flips_table = tables.values()
  assert maps_table["Grad-CAM (stage3)"] == {
    "mask_size_precision": 0.41,
    "pointing_game_0px": 0.5,
    "deletion_auc (judge)": 0.2,
  }
  assert maps_table["random pixel order (reference)"] == {"deletion_auc (judge)": 0.6}
  assert flips_table["counterfactual, ddim_inversion"] == {"valid_flip_rate": 0.97, "flip_rate_judge": 1.0}
  assert "< 0.05" in list(tables)[1]
  legend = {"Grad-CAM (stage3)": "the judge's <coarse> map"}
  page = open(gallery.write_index(tmp_path, [_entry(0, "a.png")], legend, tables), encoding="utf-8").read()
  assert 'id="legend"' in page and "the judge&#x27;s &lt;coarse&gt; map" in page and "blob &lt;detector&gt;" in page
  assert "<td>0.41</td>" in page and "<td>-</td>" in page  # a missing value is a dash
  assert "cyan outline" in page and "inferno" in page
  assert 'id="legend"' not in open(gallery.write_index(tmp_path / "b", []), encoding="utf-8").read()


def test_index_of_no_entries(tmp_path):
  page = open(gallery.write_index(tmp_path, []), encoding="utf-8").read()
  assert "No images." in page and "<b>0</b> images" in page


@pytest.mark.parametrize("key", ["panel", "index", "label", "prediction", "vote_share", "correct", "entropy"])
def test_index_rejects_an_entry_missing_a_key(tmp_path, key):
  bad = _entry(5, "5.png")
  del bad[key]
  with pytest.raises(ValueError, match=rf"entries\[1\].*missing key '{key}'"):
    gallery.write_index(tmp_path, [_entry(0, "0.png"), bad])
  assert not (tmp_path / "index.html").exists()


@pytest.mark.parametrize(
  "change,key",
  [
    ({"panel": "/abs/0001.png"}, "panel"),
    ({"panel": "../0001.png"}, "panel"),
    ({"panel": "panels/../../0001.png"}, "panel"),
    ({"panel": ""}, "panel"),
    ({"vote_share": 1.5}, "vote_share"),
    ({"correct": "yes"}, "correct"),
    ({"index": "7"}, "index"),
    ({"entropy": None}, "entropy"),
    ({"label": 3}, "label"),
  ],
)
def test_index_rejects_bad_values(tmp_path, change, key):
  with pytest.raises(ValueError, match=rf"entries\[0\] \(index .+\): key '{key}'"):
    gallery.write_index(tmp_path, [{**_entry(4, "4.png"), **change}])


def test_index_rejects_an_entry_that_is_not_a_dict(tmp_path):
  with pytest.raises(ValueError, match=r"entries\[0\] must be a dict"):
    gallery.write_index(tmp_path, ["panels/0.png"])


# --- the page in a headless browser ----------------------------------------------------------------------------------

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(
  CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install -y chromium)"
)


class _Dom(html.parser.HTMLParser):
  """Collects the attributes of every <img>, card <figure> and group <h2>, and of the #status element."""

  def __init__(self, text: str):
    super().__init__()
    self.images, self.cards, self.groups, self.status = [], [], [], None
    self.feed(text)

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "img":
      self.images.append(attrs)
    elif tag == "figure":
      self.cards.append(attrs)
    elif tag == "h2":
      self.groups.append(attrs)
    elif attrs.get("id") == "status":
      self.status = attrs


def _chromium(tmp_path, url: str, *flags: str) -> subprocess.CompletedProcess:
  command = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}"]
  command += ["--window-size=1200,900", *flags, url]
  proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc


def _dom(tmp_path, index: str, fragment: str = "") -> _Dom:
  return _Dom(_chromium(tmp_path, f"file://{index}{fragment}", "--dump-dom").stdout)


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory):
  """Three panels (one in a sub-folder with a space) and their index.html."""
  out = tmp_path_factory.mktemp("gallery")
  entries = []
  for index, (panel, channels, correct) in enumerate(
    [("panels/0000.png", 1, True), ("panels/0001.png", 3, False), ("more panels/0002.png", 1, True)]
  ):
    image, counterfactuals, maps = _example(28, channels, seed=index)
    gallery.save_panel_png(out / panel, image, counterfactuals, maps, f"example {index}")
    entries.append(_entry(index, panel, correct=correct))
  return out, gallery.write_index(out, entries)


@needs_chromium
def test_page_loads_every_panel_in_a_headless_browser(gallery_dir, tmp_path):
  out, index = gallery_dir
  dom = _dom(tmp_path, index)
  assert len(dom.images) == 3
  assert [img.get("data-loaded") for img in dom.images] == ["1", "1", "1"], dom.images
  assert dom.status is not None and dom.status["data-state"] == "ok", dom.status
  assert dom.status["data-loaded"] == dom.status["data-total"] == "3"

  shot = tmp_path / "screenshot.png"
  _chromium(tmp_path, f"file://{index}", f"--screenshot={shot}")
  with Image.open(shot) as png:
    assert png.size == (1200, 900)
    assert len(np.unique(np.asarray(png.convert("L")))) > 50, "the screenshot shows more than a blank page"


@needs_chromium
def test_page_reports_a_missing_panel(gallery_dir, tmp_path):
  out, _ = gallery_dir
  copy = tmp_path / "copy"
  shutil.copytree(out, copy)
  os.remove(copy / "panels" / "0001.png")
  dom = _dom(tmp_path, str(copy / "index.html"))
  assert [img.get("data-loaded") for img in dom.images] == ["1", "0", "1"], dom.images
  assert dom.status["data-state"] == "broken" and dom.status["data-loaded"] == "2", dom.status


@needs_chromium
def test_page_sorts_filters_and_groups_from_the_url_fragment(gallery_dir, tmp_path):
  _, index = gallery_dir
  dom = _dom(tmp_path, index, "#sort=vote-desc&show=all&group=0")
  assert [card["data-index"] for card in dom.cards] == ["2", "1", "0"]
  assert not dom.groups

  dom = _dom(tmp_path, index, "#sort=index-asc&show=incorrect&group=1")
  visible = [card["data-index"] for card in dom.cards if "hidden" not in card]
  assert visible == ["1"]
  assert [g["class"] for g in dom.groups] == ["group incorrect"]

  dom = _dom(tmp_path, index, "#sort=vote-asc&show=all&group=1")
  assert [card["data-index"] for card in dom.cards] == ["1", "0", "2"], "incorrect first, then by vote share"
  assert [g["class"] for g in dom.groups] == ["group incorrect", "group correct"]
