"""Sample-quality metrics (SPEC §8): FID, Inception Score and KID from network features, in float64.

Features come from `get_feature_fn(config)`: the FID Inception-v3 (`score_sde.inception`; pool_3 for FID
and KID, its 1008 logits for IS) for real data sets, and the digits classifier
(`score_sde.digits_classifier`; its 128 penultimate features and 10 logits) for `data.dataset='DIGITS'`,
where Inception's ImageNet features would say little about 16x16 grey digits.

Reference statistics of a data set live in one .npz per data set and resolution (see `stats_path`),
holding the real images' features ('pool_3', float32 (n, F)), their mean ('mu') and covariance ('sigma',
float64, with the n - 1 normaliser). `python main.py --config ... --mode stats --workdir ...` writes it.
"""
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from scipy import linalg
from scipy import special

from score_sde import digits_classifier, files, inception

# Added to both covariances when sqrtm(S1 S2) is not finite (singular products, e.g. fewer samples than
# features): the usual remedy of the FID reference code (Heusel et al. 2017). It moves FID by about
# eps * trace-scale, far below what FID differences mean.
FID_EPS = 1e-6
# Imaginary parts of sqrtm's diagonal above this mean the product was too ill-conditioned to trust.
FID_IMAG_ATOL = 1e-3
# TF-GAN's block size for KID, which the 2021 code used: the estimate averages per-block U-statistics.
KID_BLOCK_SIZE = 1024
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _features(f, name):
  f = np.asarray(f, np.float64)
  if f.ndim != 2 or len(f) < 2:
    raise ValueError(f"{name} must be (n >= 2, dim) features; got shape {f.shape}.")
  return f


# ------------------------------------------------------------------------------------------------- FID
def feature_stats(features):
  """(mean (F,), covariance (F, F) with the unbiased n - 1 normaliser) of (n, F) features, in float64."""
  f = _features(features, "features")
  return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrtm(m):
  # scipy warns on every singular product (e.g. features with a dead ReLU unit, whose variance is 0); the
  # result is still checked below (finite, small imaginary part), so the warning would only be noise.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", linalg.LinAlgWarning)
    return linalg.sqrtm(m)


def fid_from_stats(mu1, sigma1, mu2, sigma2):
  """Frechet distance |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) of two Gaussians (Heusel et al. 2017).

  (S1 S2)^(1/2) is scipy's `sqrtm`. When it is not finite (a singular product), FID_EPS * I is added to both
  covariances and it is taken again. Round-off can leave it complex with tiny imaginary parts: they are
  dropped, unless one on the diagonal exceeds FID_IMAG_ATOL, which is an error.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f"FID needs means (F,) and covariances (F, F) of one F; got {mu1.shape}, {sigma1.shape}, "
                     f"{mu2.shape}, {sigma2.shape}.")
  covmean = _sqrtm(sigma1 @ sigma2)
  if not np.all(np.isfinite(covmean)):
    offset = FID_EPS * np.eye(d)
    covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    worst = np.max(np.abs(np.diagonal(covmean).imag))
    if worst > FID_IMAG_ATOL:
      raise ValueError(f"sqrtm(S1 S2) has an imaginary part of {worst:.3g} on its diagonal: the covariances are "
                       f"too ill-conditioned for FID (use more samples).")
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(f1, f2):
  """FID between two sets of features (n1, F) and (n2, F)."""
  return fid_from_stats(*feature_stats(f1), *feature_stats(f2))


# -------------------------------------------------------------------------------------------------- IS
def inception_score(logits=None, *, probs=None, num_splits=1):
  """IS = exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016), p(y) the mean of p(y|x) over the split.

  Give `logits` (n, K) (log-softmaxed here, in float64) or `probs` (n, K) (rows summing to 1). With
  num_splits > 1 the examples are cut into that many consecutive near-equal parts, IS is taken in each and
  the mean returned (the Improved-GAN protocol used 10); num_splits=1 is TF-GAN's estimate, the 2021 code's.
  """
  if (logits is None) == (probs is None):
    raise ValueError("inception_score takes exactly one of logits= or probs=.")
  if logits is not None:
    logp = special.log_softmax(np.asarray(logits, np.float64), axis=-1)
  else:
    p = np.asarray(probs, np.float64)
    if p.ndim == 2 and (np.any(p < 0) or not np.allclose(p.sum(-1), 1.0, atol=1e-4)):
      raise ValueError("probs must be non-negative rows summing to 1 (pass logits= for raw scores).")
    with np.errstate(divide="ignore"):
      logp = np.log(p)
  if logp.ndim != 2 or len(logp) < 1:
    raise ValueError(f"inception_score needs (n, classes) predictions; got shape {logp.shape}.")
  if not 1 <= int(num_splits) <= len(logp):
    raise ValueError(f"num_splits={num_splits} must be between 1 and the number of examples ({len(logp)}).")
  scores = []
  for part in np.array_split(logp, int(num_splits)):
    p = np.exp(part)
    with np.errstate(divide="ignore"):  # a class no example predicts: log 0, multiplied by p = 0 below
      log_marginal = np.log(p.mean(axis=0))
    # KL(p || q) = sum p (log p - log q); 0 log 0 = 0 where a class has no mass (xlogy's convention).
    kl = np.sum(special.xlogy(p, p) - p * np.where(p > 0, log_marginal, 0.0), axis=-1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores))


# ------------------------------------------------------------------------------------------------- KID
def _mmd2_unbiased(x, y):
  """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018): diagonals of k_xx, k_yy left out."""
  d = x.shape[1]
  m, n = len(x), len(y)
  k_xx, k_yy, k_xy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
  return ((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
          - 2.0 * k_xy.mean())


def kid(f1, f2, max_block_size=KID_BLOCK_SIZE):
  """Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel, block-averaged.

  Both sets are cut into the same number B = ceil(max(n1, n2) / max_block_size) of consecutive blocks of
  near-equal size (the larger ones last), the unbiased estimate is taken between the i-th blocks and the B
  values averaged: TF-GAN's block estimator, which the 2021 code reported (its cost is quadratic in the
  block size, not in n). max_block_size=None uses the whole sets in one U-statistic. The features should
  be in random order, as samples and a shuffled data set are.
  """
  f1, f2 = _features(f1, "f1"), _features(f2, "f2")
  if f1.shape[1] != f2.shape[1]:
    raise ValueError(f"KID needs features of one dimension; got {f1.shape[1]} and {f2.shape[1]}.")
  blocks = 1 if max_block_size is None else -(-max(len(f1), len(f2)) // int(max_block_size))
  if min(len(f1), len(f2)) < 2 * blocks:
    raise ValueError(f"KID with max_block_size={max_block_size} needs >= {2 * blocks} features per set; got "
                     f"{len(f1)} and {len(f2)}.")
  parts = zip(_blocks(f1, blocks), _blocks(f2, blocks))
  return float(np.mean([_mmd2_unbiased(a, b) for a, b in parts]))


def _blocks(f, count):
  """`count` consecutive blocks: n // count examples each, the last n % count of them one more."""
  small, extra = divmod(len(f), count)
  sizes = [small] * (count - extra) + [small + 1] * extra
  return np.split(f, np.cumsum(sizes)[:-1])


# ----------------------------------------------------------------------------------------------- stats
def stats_path(config):
  """Where the reference statistics of config's data live.

  `<dir>/<dataset>_<image_size>_stats.npz` (LSUN: `lsun_<category>_<size>_stats.npz`), lower case, with
  <dir> = config.eval.stats_dir when the config has it set, else `assets/stats` in the repository.
  """
  folder = config.eval.get("stats_dir", "") or os.path.join(_ROOT, "assets", "stats")
  name = config.data.dataset.lower()
  if config.data.dataset == "LSUN":
    name += "_" + config.data.get("category", "bedroom")
  return os.path.join(folder, f"{name}_{config.data.image_size}_stats.npz")


_STATS_HINT = "write it with `python main.py --config <config> --mode stats --workdir <workdir>`"


def save_stats(path, features):
  """Writes {'pool_3': features (float32), 'mu', 'sigma' (float64)} to an .npz, atomically."""
  features = _features(features, "features")
  mu, sigma = feature_stats(features)
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  files.save_npz(path, {"pool_3": features.astype(np.float32), "mu": mu, "sigma": sigma})


def load_stats(path):
  """{'pool_3', 'mu', 'sigma'} from a stats file written by `save_stats`; a one-line ValueError otherwise."""
  path = epath.Path(path)
  if not path.exists():
    raise ValueError(f"reference statistics {os.fspath(path)!r} do not exist: {_STATS_HINT}.")
  try:
    with path.open("rb") as f, np.load(f) as data:
      stats = {k: np.asarray(data[k]) for k in ("pool_3", "mu", "sigma")}
  except Exception as err:  # pylint: disable=broad-except  (zip, key and OS errors all mean "unusable")
    raise ValueError(f"reference statistics {os.fspath(path)!r} are unreadable ({type(err).__name__}: {err}): "
                     f"delete the file and {_STATS_HINT}.") from None
  n, d = stats["pool_3"].shape if stats["pool_3"].ndim == 2 else (0, 0)
  if n < 2 or stats["mu"].shape != (d,) or stats["sigma"].shape != (d, d):
    raise ValueError(f"reference statistics {os.fspath(path)!r} have inconsistent shapes (pool_3 "
                     f"{stats['pool_3'].shape}, mu {stats['mu'].shape}, sigma {stats['sigma'].shape}): delete "
                     f"the file and {_STATS_HINT}.")
  return stats


def compute_metrics(pool_3, logits, ref_stats, kid_block_size=KID_BLOCK_SIZE):
  """{'fid', 'inception_score', 'kid'} of samples' features against `load_stats`' reference statistics."""
  pool_3 = _features(pool_3, "pool_3")
  if pool_3.shape[1] != ref_stats["mu"].shape[0]:
    raise ValueError(f"samples have {pool_3.shape[1]} features but the reference statistics "
                     f"{ref_stats['mu'].shape[0]}: they come from different feature networks.")
  mu, sigma = feature_stats(pool_3)
  return {"fid": fid_from_stats(mu, sigma, ref_stats["mu"], ref_stats["sigma"]),
          "inception_score": inception_score(logits),
          "kid": kid(ref_stats["pool_3"], pool_3, kid_block_size)}


# ---------------------------------------------------------------------------------------- feature nets
def get_feature_fn(config, batch_size=None):
  """`fn(images) -> {'pool_3': (B, F) float32, 'logits': (B, K) float32}` (numpy) for uint8 NHWC images.

  The network: the digits classifier when config.data.dataset == 'DIGITS' (trained on first use, see
  `digits_classifier.get_classifier`), else the FID Inception from config.eval.inception_path. Images go
  through in chunks of `batch_size` (default config.eval.batch_size), the last one padded, so each
  compiled shape is compiled once.
  """
  if config.data.dataset == "DIGITS":
    apply = digits_classifier.get_classifier_fn(digits_classifier.get_classifier(config))
  else:
    path = inception.resolve_path(config.eval.get("inception_path", ""))
    apply = inception.get_inception_fn(inception.load_variables(path))
  chunk = int(batch_size or config.eval.batch_size)
  if chunk < 1:
    raise ValueError(f"batch_size={chunk} must be >= 1.")
  shape = (config.data.image_size, config.data.image_size, config.data.num_channels)

  def feature_fn(images):
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
      raise ValueError(f"feature_fn takes uint8 images of shape (B, {', '.join(map(str, shape))}); got "
                       f"{images.dtype} {images.shape} (image_utils.to_uint8 converts [0, 1] floats).")
    outs = []
    for start in range(0, len(images), chunk):
      part = images[start:start + chunk]
      pad = np.zeros((chunk - len(part),) + shape, np.uint8)  # a full chunk: one compiled shape
      out = jax.device_get(apply(jnp.asarray(np.concatenate([part, pad]))))
      outs.append({k: np.asarray(v[:len(part)], np.float32) for k, v in out.items()})
    if not outs:
      raise ValueError("feature_fn got no images.")
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  return feature_fn
