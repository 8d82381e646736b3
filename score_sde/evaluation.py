"""Sample-quality metrics: FID, Inception Score and KID from network features, in float64.

Features come from `get_feature_fn(config)`, whose network follows the 2021 code (`feature_network`):
  * 'fid_inception' (`score_sde.inception`): the FID Inception-v3, for data below 256 px: pool_3 (2048) for
    FID and KID, its 1008 logits for IS;
  * 'imagenet_inception_v3' (`score_sde.inception_v3`): TF-slim's ImageNet Inception-v3 feature vector, for
    data of 256 px and more (2021: `inceptionv3 = config.data.image_size >= 256`): 2048 features, no logits,
    so FID and KID but no IS;
  * 'digits_classifier' (`score_sde.digits_classifier`): its 128 penultimate features and 10 logits, for
    `data.dataset='DIGITS'`, where Inception's ImageNet features would say little about 16x16 grey digits.
`config.eval.feature_network` ('fid_inception' or 'imagenet_inception_v3') overrides the choice.

Reference statistics of a data set live in one .npz per data set and resolution (`stats_path`), holding the
real images' features ('pool_3', float32 (n, F)), their mean ('mu') and covariance ('sigma', float64, with
the n - 1 normaliser) and the name of the network that made them ('network'). `python main.py --config ...
--mode stats --workdir ...` writes it. The 2021 release's files (`cifar10_stats.npz`, `celeba_stats.npz`,
`lsun_<category>_<size>_stats.npz`: 'pool_3' only, no tag) are read too (`load_reference_stats`).
"""
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from scipy import linalg
from scipy import special

from score_sde import digits_classifier, files, inception, inception_v3, settings

# Added to both covariances when sqrtm(S1 S2) is not finite (singular products, e.g. fewer samples than
# features): the usual remedy of the FID reference code (Heusel et al. 2017). It moves FID by about
# eps * trace-scale, far below what FID differences mean.
FID_EPS = 1e-6
# Imaginary parts of sqrtm's diagonal above this mean the product was too ill-conditioned to trust.
FID_IMAG_ATOL = 1e-3
# TF-GAN's block size for KID, which the 2021 code used: the estimate averages per-block U-statistics.
KID_BLOCK_SIZE = 1024
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Feature networks, by the tag their features carry in statistics files.
FID_INCEPTION = inception.NAME  # 'fid_inception'
IMAGENET_INCEPTION_V3 = inception_v3.NAME  # 'imagenet_inception_v3'
DIGITS_CLASSIFIER = "digits_classifier"
NETWORKS = (FID_INCEPTION, IMAGENET_INCEPTION_V3, DIGITS_CLASSIFIER)
# From this resolution on, the 2021 code took the ImageNet Inception-v3 (run_lib.py: image_size >= 256).
INCEPTION_V3_FROM_SIZE = 256


def _features(f, name):
  f = np.asarray(f, np.float64)
  if f.ndim != 2 or len(f) < 2:
    raise ValueError(f"{name} must be (n >= 2, dim) features; got shape {f.shape}.")
  return f


# ------------------------------------------------------------------------------------------------- FID
def feature_stats(features, chunk=8192):
  """(mean (F,), covariance (F, F) with the unbiased n - 1 normaliser) of (n, F) features, in float64.

  Two passes over `chunk` rows at a time (mean, then the centred products), so a large float32 set (e.g. a
  2021 statistics file's pool_3) is never copied whole to float64; the same sums as np.cov.
  """
  f = np.asarray(features)
  if f.ndim != 2 or len(f) < 2:
    raise ValueError(f"features must be (n >= 2, dim) features; got shape {f.shape}.")
  n, d = f.shape
  mu = np.zeros(d)
  for start in range(0, n, chunk):
    mu += f[start:start + chunk].sum(axis=0, dtype=np.float64)
  mu /= n
  sigma = np.zeros((d, d))
  for start in range(0, n, chunk):
    centred = f[start:start + chunk].astype(np.float64) - mu
    sigma += centred.T @ centred
  return mu, sigma / (n - 1)


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
def _stats_folder(config):
  return settings.EvalSettings.from_config(config).stats_dir or os.path.join(_ROOT, "assets", "stats")


def stats_path(config):
  """Where `--mode stats` writes the reference statistics of config's data, and where eval looks first.

  config.eval.stats_path when set; else `<dir>/<dataset>_<image_size>_stats.npz` (LSUN:
  `lsun_<category>_<size>_stats.npz`; a user's IMAGE_FOLDER / TFRECORDS: `<dataset>_<digest>_<size>_stats.npz`,
  the digest naming its training files, so two folders never share statistics), lower case, with <dir> =
  config.eval.stats_dir when set, else `assets/stats` in the repository.
  """
  explicit = settings.EvalSettings.from_config(config).stats_path
  if explicit:
    return explicit
  from score_sde import datasets  # pylint: disable=g-import-not-at-top
  name = config.data.dataset.lower()
  if config.data.dataset == "LSUN":
    name += "_" + settings.DataSettings.from_config(config).category
  digest = datasets.data_digest(config)
  if digest:
    name += "_" + digest
  return os.path.join(_stats_folder(config), f"{name}_{config.data.image_size}_stats.npz")


def stats_path_2021(config):
  """The name the 2021 release gave config's statistics file (`evaluation.load_dataset_stats`), in the same
  folder as `stats_path`, or None where it had none: `cifar10_stats.npz` (32 px), `celeba_stats.npz` (64 px),
  `lsun_<category>_<size>_stats.npz` (the same as ours)."""
  d, size = config.data.dataset, config.data.image_size
  names = {("CIFAR10", 32): "cifar10_stats.npz", ("CELEBA", 64): "celeba_stats.npz"}
  if d == "LSUN":
    return os.path.join(_stats_folder(config), f"lsun_{settings.DataSettings.from_config(config).category}_{size}_stats.npz")
  return os.path.join(_stats_folder(config), names[(d, size)]) if (d, size) in names else None


def reference_stats_path(config):
  """The statistics file eval reads: config.eval.stats_path when set; else `stats_path(config)` when it exists;
  else the 2021 release's file name (`stats_path_2021`) in the same folder when that exists; else
  `stats_path(config)` (missing: `load_reference_stats` then says how to write it)."""
  ours = stats_path(config)
  if settings.EvalSettings.from_config(config).stats_path or epath.Path(ours).exists():
    return ours
  legacy = stats_path_2021(config)
  if legacy and epath.Path(legacy).exists():
    return legacy
  return ours


_STATS_HINT = "write it with `python main.py --config <config> --mode stats --workdir <workdir>`"


def save_stats(path, features, network=None):
  """Writes {'pool_3': features (float32), 'mu', 'sigma' (float64), 'network'} to an .npz, atomically.

  `network` names the feature network that made `features` (one of NETWORKS; `feature_fn.network` and
  `feature_network(config)` give it); it is checked on load so that statistics of one network are never
  compared with features of another (both Inceptions give 2048 features). Give it: without it the file is
  untagged, and is read as the 2021 files are (see `load_reference_stats`).
  """
  features = _features(features, "features")
  mu, sigma = feature_stats(features)
  arrays = {"pool_3": features.astype(np.float32), "mu": mu, "sigma": sigma}
  if network is not None:
    if network not in NETWORKS:
      raise ValueError(f"network={network!r} is not one of {NETWORKS}.")
    arrays["network"] = np.asarray(network)
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  files.save_npz(path, arrays)


def _read_stats(path):
  """(stats, stored_moments): the file's 'pool_3', 'mu', 'sigma' (computed from pool_3 in float64 where the
  file has none, as the 2021 files do) and 'network' (its tag, None if untagged); one-line ValueErrors."""
  path = epath.Path(path)
  where = repr(os.fspath(path))
  if not path.exists():
    raise ValueError(f"reference statistics {where} do not exist: {_STATS_HINT}.")
  try:
    with path.open("rb") as f, np.load(f) as data:
      stored = {k: np.asarray(data[k]) for k in ("pool_3", "mu", "sigma", "network") if k in data.files}
  except Exception as err:  # pylint: disable=broad-except  (zip, pickle and OS errors all mean "unusable")
    raise ValueError(f"reference statistics {where} are unreadable ({type(err).__name__}: {err}): delete the file "
                     f"and {_STATS_HINT}.") from None
  if "pool_3" not in stored:
    raise ValueError(f"reference statistics {where} hold no 'pool_3' features (keys: {sorted(stored)}; KID needs the "
                     f"features, not only mu and sigma): {_STATS_HINT}.")
  if ("mu" in stored) != ("sigma" in stored):
    raise ValueError(f"reference statistics {where} hold {'mu' if 'mu' in stored else 'sigma'} without "
                     f"{'sigma' if 'mu' in stored else 'mu'}: delete the file and {_STATS_HINT}.")
  pool = stored["pool_3"]
  n, d = pool.shape if pool.ndim == 2 else (0, 0)
  if n < 2 or not np.issubdtype(pool.dtype, np.floating):
    raise ValueError(f"reference statistics {where} have pool_3 of shape {pool.shape} and dtype {pool.dtype}, not "
                     f"(n >= 2, features) floats: delete the file and {_STATS_HINT}.")
  stored_moments = "mu" in stored
  if stored_moments:
    mu, sigma = stored["mu"], stored["sigma"]
    if mu.shape != (d,) or sigma.shape != (d, d):
      raise ValueError(f"reference statistics {where} have inconsistent shapes (pool_3 {pool.shape}, mu {mu.shape}, "
                       f"sigma {sigma.shape}): delete the file and {_STATS_HINT}.")
  else:
    mu, sigma = feature_stats(pool)
  network = None
  if "network" in stored:
    tag = stored["network"]
    network = str(tag[()]) if tag.ndim == 0 and tag.dtype.kind == "U" else None
    if network not in NETWORKS:
      raise ValueError(f"reference statistics {where} name an unknown feature network {tag!r} (expected one of "
                       f"{NETWORKS}): delete the file and {_STATS_HINT}.")
  return {"pool_3": pool, "mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64),
          "network": network}, stored_moments


def load_stats(path, network=None):
  """{'pool_3', 'mu', 'sigma', 'network'} of a statistics file; a one-line ValueError when it is unusable.

  Reads our files (`save_stats`) and the 2021 release's (pool_3 only: mu and sigma are then computed here, in
  float64). 'network' is the file's tag, None for an untagged file. With `network` given, a file tagged with
  another network is refused; untagged files are not checked here (`load_reference_stats` does that).
  """
  stats, _ = _read_stats(path)
  if network is not None and stats["network"] not in (None, network):
    raise ValueError(f"reference statistics {os.fspath(path)!r} hold {stats['network']} features, not {network} "
                     f"ones: {_STATS_HINT}, or point eval.stats_path at statistics of {network}.")
  return stats


def load_reference_stats(config):
  """`load_stats` of `reference_stats_path(config)`, checked against the network `get_feature_fn(config)` uses.

  An untagged file is taken to come from the network the 2021 rule gives for config's data (`default_network`:
  the FID Inception below 256 px, the ImageNet Inception-v3 from 256 px on, the digits classifier for DIGITS),
  which is what the 2021 files hold. One exception: an untagged file with stored mu / sigma was written by this
  code before files were tagged, when every resolution used the FID Inception; from 256 px on that is ambiguous
  and refused (write it again with `--mode stats`).
  """
  path = reference_stats_path(config)
  if not epath.Path(path).exists():
    legacy = stats_path_2021(config)
    also = f" (nor the 2021 release's {legacy!r})" if legacy and legacy != path else ""
    raise ValueError(f"reference statistics {path!r} do not exist{also}: {_STATS_HINT}, or set eval.stats_path to "
                     f"a statistics file.")
  stats, stored_moments = _read_stats(path)
  expected, found = feature_network(config), stats["network"]
  if found is None:
    found = default_network(config)
    if stored_moments and found == IMAGENET_INCEPTION_V3:
      raise ValueError(f"reference statistics {path!r} are untagged and hold mu / sigma: written before statistics "
                       f"named their network, when {config.data.image_size} px data used the FID Inception; "
                       f"delete the file and {_STATS_HINT}.")
    found_text = f"{found} features (untagged: assumed, as 2021 did at {config.data.image_size} px)"
  else:
    found_text = f"{found} features"
  if found != expected:
    raise ValueError(f"reference statistics {path!r} hold {found_text}, but this config's features come from "
                     f"{expected}: {_STATS_HINT} (to another eval.stats_dir / eval.stats_path), or point "
                     f"eval.stats_path at statistics of {expected}.")
  stats["network"] = found
  return stats


def compute_metrics(pool_3, logits, ref_stats, kid_block_size=KID_BLOCK_SIZE):
  """{'fid', 'inception_score', 'kid'} of samples' features against `load_stats`' reference statistics.

  No 'inception_score' when there are no logits (`logits` None or (n, 0), as the ImageNet Inception-v3's
  feature_fn gives): IS is then not reported at all, as 2021 reported none (-1) at 256 px and above.
  """
  pool_3 = _features(pool_3, "pool_3")
  if pool_3.shape[1] != ref_stats["mu"].shape[0]:
    raise ValueError(f"samples have {pool_3.shape[1]} features but the reference statistics "
                     f"{ref_stats['mu'].shape[0]}: they come from different feature networks.")
  mu, sigma = feature_stats(pool_3)
  metrics = {"fid": fid_from_stats(mu, sigma, ref_stats["mu"], ref_stats["sigma"])}
  if logits is not None and np.ndim(logits) == 2 and np.shape(logits)[1] == 0:
    logits = None
  if logits is not None:
    if np.shape(logits)[0] != len(pool_3):
      raise ValueError(f"{np.shape(logits)[0]} logits for {len(pool_3)} pool_3 features: not the same samples.")
    metrics["inception_score"] = inception_score(logits)
  metrics["kid"] = kid(ref_stats["pool_3"], pool_3, kid_block_size)
  return metrics


# ---------------------------------------------------------------------------------------- feature nets
def default_network(config):
  """The 2021 choice: the digits classifier for DIGITS, else the ImageNet Inception-v3 from 256 px on, else
  the FID Inception."""
  if config.data.dataset == "DIGITS":
    return DIGITS_CLASSIFIER
  return IMAGENET_INCEPTION_V3 if config.data.image_size >= INCEPTION_V3_FROM_SIZE else FID_INCEPTION


def feature_network(config):
  """The network `get_feature_fn(config)` uses: config.eval.feature_network if set ('fid_inception' or
  'imagenet_inception_v3'), else `default_network(config)`."""
  override = settings.EvalSettings.from_config(config).feature_network
  if not override:
    return default_network(config)
  if override not in (FID_INCEPTION, IMAGENET_INCEPTION_V3):
    raise ValueError(f"eval.feature_network={override!r}: use '' (the 2021 choice by resolution), "
                     f"{FID_INCEPTION!r} or {IMAGENET_INCEPTION_V3!r}.")
  return override


def get_feature_fn(config, batch_size=None):
  """`fn(images) -> {'pool_3': (B, F) float32, 'logits': (B, K) float32}` (numpy) for uint8 NHWC images.

  The network is `feature_network(config)` (also `fn.network`):
    fid_inception          pool_3 (B, 2048), logits (B, 1008); weights from config.eval.inception_path
    imagenet_inception_v3  pool_3 (B, 2048), logits (B, 0): no classifier; weights from
                           config.eval.inception_v3_path; images at their own size (>= 75 px)
    digits_classifier      pool_3 (B, 128), logits (B, 10) (trained on first use, see
                           `digits_classifier.get_classifier`)
  Images go through in chunks of `batch_size` (default config.eval.batch_size), the last one padded, so each
  compiled shape is compiled once.
  """
  network = feature_network(config)
  if network == DIGITS_CLASSIFIER:
    apply = digits_classifier.get_classifier_fn(digits_classifier.get_classifier(config))
  elif network == FID_INCEPTION:
    path = inception.resolve_path(settings.EvalSettings.from_config(config).inception_path)
    apply = inception.get_inception_fn(inception.load_variables(path))
  else:
    if config.data.image_size < inception_v3.MIN_SIZE:
      raise ValueError(f"the ImageNet Inception-v3 takes images at their own size, at least {inception_v3.MIN_SIZE} "
                       f"px; data.image_size={config.data.image_size} is smaller: leave eval.feature_network unset.")
    path = inception_v3.resolve_path(settings.EvalSettings.from_config(config).inception_v3_path)
    apply = inception_v3.get_inception_v3_fn(inception_v3.load_variables(path))
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
      out = {k: np.asarray(v[:len(part)], np.float32) for k, v in out.items()}
      out.setdefault("logits", np.zeros((len(part), 0), np.float32))  # a network without a classifier
      outs.append(out)
    if not outs:
      raise ValueError("feature_fn got no images.")
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  feature_fn.network = network
  return feature_fn
