"""Timestep weighting of the mean-error decision (Clark & Jaini 2023): not every noise level says as much.

The mean aggregator averages an image's per-class denoising errors over its draws with equal weight for every
timestep t. A weighting splits [t_min, t_max] into equal bins, takes each class's mean error per bin, centres it per
image and bin (minus the mean over classes: only differences between classes decide), divides it by the bin's
spread over images (`scale`, label-free), and scores class c as

  logit_c = sum over (c', b) of W[c, c', b] * x[c', b] + offset_c

Three forms, all pure functions of stored draws:
  `label_free`: W[c, c, b] = -1 / T, no offsets: the standardised gaps summed over bins (only T uses labels).
  `shared`: W[c, c, b] = -w_b, a weight per t bin common to every class, fitted by multinomial logistic
    regression (the conditional-logit form; L-BFGS on the L2-penalised likelihood, as scikit-learn fits it).
  `per_class`: W free, scikit-learn's multinomial LogisticRegression on the C x B features.
`offsets=True` adds a per-class offset to the fit (classes the denoiser models worse). The fitted forms weight each
image by 1 / (C x its class's frequency in the fit set), so that what they learn is the uniform-prior operating
point, not the fit set's class frequencies; a class prior is added at use (`logits(prior=...)`). A weighting is
fitted on one set of draws and applied to another; it is stored in the model folder keyed like the temperature
(`modeldir.store_weighting`).
"""

import dataclasses

import numpy as np
import scipy.optimize
import scipy.special
from sklearn import linear_model

from medfusion import metrics

FORMS = ("label_free", "shared", "per_class")
# config.classify.weighting: none (the plain mean), a form, or a fitted form with class offsets
CHOICES = ("none", "label_free", "shared", "shared_offsets", "per_class", "per_class_offsets")


def parse_choice(choice: str) -> tuple[str, bool]:
  """(form, offsets) of a `config.classify.weighting` value other than none."""
  if choice not in CHOICES[1:]:
    raise ValueError(f"config.classify.weighting={choice!r} is not one of {CHOICES}")
  return choice.removesuffix("_offsets"), choice.endswith("_offsets")


@dataclasses.dataclass(frozen=True)
class TimestepWeighting:
  """A fitted weighting (see the module docstring); `fit_prior` [C] records the fit set's class frequencies."""

  form: str
  edges: tuple[float, ...]  # B + 1 bin edges over [t_min, t_max]
  scale: tuple[float, ...]  # [B] spread of the centred errors per bin
  weights: tuple  # [C][C][B] nested
  offsets: tuple[float, ...]  # [C]
  fit_prior: tuple[float, ...]  # [C]

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict) -> "TimestepWeighting":
    if data.get("form") not in FORMS:
      raise ValueError(f"weighting form {data.get('form')!r} is not one of {FORMS}")
    w = np.asarray(data["weights"], dtype=np.float64)
    c, b = len(data["offsets"]), len(data["edges"]) - 1
    if w.shape != (c, c, b) or len(data["scale"]) != b or len(data["fit_prior"]) != c:
      raise ValueError(f"weighting arrays do not agree: weights {w.shape}, {c} classes, {b} bins")
    return cls(
      data["form"],
      tuple(map(float, data["edges"])),
      tuple(map(float, data["scale"])),
      _nested(w),
      tuple(map(float, data["offsets"])),
      tuple(map(float, data["fit_prior"])),
    )

  def logits(self, errors: np.ndarray, t: np.ndarray, prior=None) -> np.ndarray:
    """Class scores [N, C] of errors [N, C, K] at timesteps t [N, K] (draws outside the edges are ignored), with
    the class `prior` [C] (None: uniform)."""
    x = binned_features(errors, t, np.asarray(self.edges)) / np.asarray(self.scale)
    out = np.einsum("ncb,dcb->nd", x, np.asarray(self.weights)) + np.asarray(self.offsets)
    if prior is not None:
      out = out + np.log(np.asarray(prior, dtype=np.float64))
    return out


def _nested(array: np.ndarray) -> tuple:
  return tuple(_nested(a) for a in array) if array.ndim > 1 else tuple(map(float, array))


def bin_edges(num_bins: int, t_min: float, t_max: float) -> np.ndarray:
  if not (isinstance(num_bins, int) and num_bins >= 1) or not t_max > t_min:
    raise ValueError(f"need num_bins >= 1 and t_max > t_min, got {num_bins}, [{t_min}, {t_max}]")
  return np.linspace(t_min, t_max, num_bins + 1)


def binned_features(errors: np.ndarray, t: np.ndarray, edges: np.ndarray) -> np.ndarray:
  """Per image and bin of t, each class's mean error minus the mean over classes: [N, C, B]. A bin in which an
  image has no draws contributes 0 (no evidence either way). The last edge is inclusive."""
  errors, t = np.asarray(errors, dtype=np.float64), np.asarray(t, dtype=np.float64)
  b = len(edges) - 1
  which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, b - 1)
  inside = (t >= edges[0]) & (t <= edges[-1])
  onehot = (which[:, :, None] == np.arange(b)[None, None, :]) & inside[:, :, None]  # [N, K, B]
  counts = onehot.sum(axis=1)  # [N, B]
  sums = np.einsum("nck,nkb->ncb", errors, onehot.astype(np.float64))
  with np.errstate(invalid="ignore", divide="ignore"):
    means = sums / counts[:, None, :]
  centred = means - means.mean(axis=1, keepdims=True)
  return np.where(counts[:, None, :] > 0, centred, 0.0)


def _scale(x: np.ndarray) -> np.ndarray:
  """Spread of the centred errors per bin over images and classes (label-free); 1 for an empty bin."""
  spread = np.sqrt((x**2).mean(axis=(0, 1)))
  return np.where(spread > 0, spread, 1.0)


def fit(errors, t, labels, form: str, num_bins: int = 10, t_min=0.0, t_max=1.0, offsets=False, c_reg=0.1):
  """A `TimestepWeighting` of `form` fitted on errors [N, C, K], t [N, K] and labels [N] (the fit set, never the
  reporting data). `c_reg` is the inverse L2 strength (scikit-learn's C) of the fitted forms."""
  if form not in FORMS:
    raise ValueError(f"weighting form {form!r} is not one of {FORMS}")
  labels = np.asarray(labels)
  n, c, _ = np.asarray(errors).shape
  if len(np.unique(labels)) != c:
    raise ValueError(f"the fit set holds {len(np.unique(labels))} of the {c} classes; a weighting needs them all")
  edges = bin_edges(num_bins, t_min, t_max)
  raw = binned_features(errors, t, edges)
  scale = _scale(raw)
  x = raw / scale
  prior = np.bincount(labels, minlength=c) / n
  balance = 1.0 / (c * prior[labels])  # per image: every class weighs the same in the fit
  eye = np.eye(c)[:, :, None]
  offset = np.zeros(c)
  if form == "label_free":
    summed = x.sum(axis=2)  # [N, C]
    temperature = metrics.fit_temperature(-summed, labels)
    weights = -eye * np.ones(num_bins) / temperature
    offsets = False
  elif form == "shared":
    w, offset = _fit_shared(x, labels, balance, offsets, c_reg)
    weights = -eye * w
  else:
    model = linear_model.LogisticRegression(C=c_reg, fit_intercept=offsets, max_iter=5000)
    model.fit(x.reshape(n, -1), labels, sample_weight=balance)
    coef, intercept = model.coef_, np.broadcast_to(model.intercept_, (len(model.coef_),))
    if len(coef) == 1:  # two classes: scikit-learn keeps one logit difference; split it symmetrically
      coef, intercept = np.stack([-coef[0], coef[0]]) / 2, np.array([-intercept[0], intercept[0]]) / 2
    weights = coef.reshape(c, c, num_bins)
    offset = np.array(intercept, dtype=np.float64) if offsets else offset
  return TimestepWeighting(
    form,
    tuple(map(float, edges)),
    tuple(map(float, scale)),
    _nested(weights),
    tuple(map(float, offset)),
    tuple(map(float, prior)),
  )


def _fit_shared(x: np.ndarray, labels: np.ndarray, balance: np.ndarray, offsets: bool, c_reg: float):
  """Weights w [B] (and offsets a [C]) maximising sum_i balance_i log softmax(-x_i w + a)[y_i] - |w - w0|^2 / (2 C) with
  w0 = 1 / B-th of the label-free weighting's scale (the penalty pulls towards equal weights, as the label-free
  form; the offsets are penalised towards 0)."""
  n, c, b = x.shape
  rows = np.arange(n)

  def split(p):
    return p[:b], (p[b:] if offsets else np.zeros(c))

  def loss(p):
    w, a = split(p)
    z = -np.einsum("ncb,b->nc", x, w) + a
    logp = scipy.special.log_softmax(z, axis=1)
    probs = np.exp(logp)
    residual = probs.copy()
    residual[rows, labels] -= 1.0  # d(-log p_y)/dz
    residual *= balance[:, None]
    grad_w = -np.einsum("nc,ncb->b", residual, x) + (w - w0) / c_reg
    value = -(balance * logp[rows, labels]).sum() + ((w - w0) ** 2).sum() / (2 * c_reg)
    if not offsets:
      return value, grad_w
    return value + (a**2).sum() / (2 * c_reg), np.concatenate([grad_w, residual.sum(axis=0) + a / c_reg])

  # start from equal weights at the label-free temperature
  w0 = np.full(b, 1.0 / metrics.fit_temperature(-x.sum(axis=2), labels))
  start = np.concatenate([w0, np.zeros(c)]) if offsets else w0.copy()
  result = scipy.optimize.minimize(loss, start, jac=True, method="L-BFGS-B")
  return split(result.x)
