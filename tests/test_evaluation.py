"""FID, IS and KID against closed forms and hand computations; stats files; the digits feature network."""
import itertools

import numpy as np
import pytest
from scipy import linalg

from configs import default_cifar10_configs
from configs.vp import digits as digits_config
from score_sde import digits_classifier, evaluation


def _rotation(d, seed):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
  return q


# ------------------------------------------------------------------------------------------------- FID
def test_fid_of_identical_features_is_zero():
  f = np.random.default_rng(0).normal(size=(200, 16)) @ np.diag(np.linspace(0.1, 3, 16))
  assert abs(evaluation.fid_from_features(f, f)) < 1e-9


def test_fid_matches_closed_form_for_commuting_covariances():
  # S1 = Q diag(a) Q^T and S2 = Q diag(b) Q^T commute, so (S1 S2)^(1/2) = Q diag(sqrt(ab)) Q^T and
  # FID = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2 exactly.
  rng = np.random.default_rng(1)
  d = 12
  q = _rotation(d, 2)
  a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = evaluation.fid_from_stats(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
  np.testing.assert_allclose(got, want, rtol=1e-10)
  np.testing.assert_allclose(evaluation.fid_from_stats(mu1, np.diag(a), mu2, np.diag(b)), want, rtol=1e-12)


def test_fid_of_rank_deficient_features_matches_an_independent_eigen_path():
  # 6 samples in 10 dimensions: both covariances are singular. tr((S1 S2)^(1/2)) is also the sum of the
  # square roots of the eigenvalues of the PSD matrix S1^(1/2) S2 S1^(1/2), computed here with eigh.
  rng = np.random.default_rng(3)
  f1, f2 = rng.normal(size=(6, 10)), 1.5 * rng.normal(size=(7, 10)) + 0.3
  mu1, s1 = f1.mean(0), np.cov(f1, rowvar=False)
  mu2, s2 = f2.mean(0), np.cov(f2, rowvar=False)
  w, v = np.linalg.eigh(s1)
  root1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
  trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)))
  want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_root
  np.testing.assert_allclose(evaluation.fid_from_features(f1, f2), want, rtol=1e-6)


def test_fid_retries_with_an_offset_when_sqrtm_is_not_finite(monkeypatch):
  calls, sqrtm = [], linalg.sqrtm

  def flaky_sqrtm(m):
    calls.append(m)
    return np.full_like(m, np.nan) if len(calls) == 1 else sqrtm(m)

  monkeypatch.setattr(evaluation.linalg, "sqrtm", flaky_sqrtm)
  a, b, eps = np.array([1.0, 0.0, 2.0]), np.array([0.5, 3.0, 0.0]), evaluation.FID_EPS
  got = evaluation.fid_from_stats(np.zeros(3), np.diag(a), np.ones(3), np.diag(b))
  # The traces keep the true covariances; only the cross term sees the offset eps * I on both.
  want = 3.0 + np.sum(a + b) - 2 * np.sum(np.sqrt((a + eps) * (b + eps)))
  assert len(calls) == 2
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_fid_rejects_large_imaginary_parts_and_bad_shapes():
  with pytest.raises(ValueError, match="imaginary part"):
    evaluation.fid_from_stats(np.zeros(2), -np.eye(2), np.zeros(2), np.eye(2))  # sqrtm(-I) = i I
  with pytest.raises(ValueError, match="one F"):
    evaluation.fid_from_stats(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# -------------------------------------------------------------------------------------------------- IS
def test_inception_score_closed_forms():
  k = 7
  one_hot = np.eye(k)[np.arange(3 * k) % k]  # confident and evenly spread over K classes: IS = K
  np.testing.assert_allclose(evaluation.inception_score(probs=one_hot), k, rtol=1e-12)
  np.testing.assert_allclose(evaluation.inception_score(probs=np.full((5, k), 1 / k)), 1.0, rtol=1e-12)
  # p(y|x) = (1/2, 1/2) and (1, 0): p(y) = (3/4, 1/4), KLs 1/2 log(4/3) and log(4/3), IS = (4/3)^(3/4).
  np.testing.assert_allclose(evaluation.inception_score(probs=[[0.5, 0.5], [1.0, 0.0]]), (4 / 3) ** 0.75,
                             rtol=1e-12)


def test_inception_score_from_logits_and_splits():
  logits = np.random.default_rng(0).normal(size=(40, 5)) * 3
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(evaluation.inception_score(logits), evaluation.inception_score(probs=p), rtol=1e-12)
  halves = [evaluation.inception_score(logits[:20]), evaluation.inception_score(logits[20:])]
  np.testing.assert_allclose(evaluation.inception_score(logits, num_splits=2), np.mean(halves), rtol=1e-12)
  with pytest.raises(ValueError, match="exactly one"):
    evaluation.inception_score(logits, probs=p)
  with pytest.raises(ValueError, match="num_splits=41"):
    evaluation.inception_score(logits, num_splits=41)


# ------------------------------------------------------------------------------------------------- KID
def _kid_by_hand(x, y):
  """The unbiased MMD^2 U-statistic with k(a, b) = (a.b/d + 1)^3, one pair at a time."""
  d = x.shape[1]
  k = lambda a, b: (np.dot(a, b) / d + 1) ** 3
  xx = np.mean([k(x[i], x[j]) for i, j in itertools.permutations(range(len(x)), 2)])
  yy = np.mean([k(y[i], y[j]) for i, j in itertools.permutations(range(len(y)), 2)])
  xy = np.mean([k(a, b) for a in x for b in y])
  return xx + yy - 2 * xy


def test_kid_matches_hand_computation():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(9, 5)), rng.normal(size=(11, 5)) + 0.5
  np.testing.assert_allclose(evaluation.kid(x, y, max_block_size=None), _kid_by_hand(x, y), rtol=1e-12)
  # Blocks of at most 4: 3 blocks; x splits 3/3/3, y splits 3/4/4 (larger blocks last).
  want = np.mean([_kid_by_hand(x[0:3], y[0:3]), _kid_by_hand(x[3:6], y[3:7]), _kid_by_hand(x[6:9], y[7:11])])
  np.testing.assert_allclose(evaluation.kid(x, y, max_block_size=4), want, rtol=1e-12)
  with pytest.raises(ValueError, match="one dimension"):
    evaluation.kid(x, y[:, :4])


def test_kid_is_unbiased_for_equal_distributions():
  # E[MMD^2_u] = 0 when both sets come from one law: the mean over 200 independent draws (each KID with
  # sd ~0.02 here) must sit within ~4 standard errors (4 * 0.02 / sqrt(200) ~ 0.006) of zero.
  rng = np.random.default_rng(0)
  draws = [evaluation.kid(rng.normal(size=(20, 4)), rng.normal(size=(20, 4)), None) for _ in range(200)]
  assert abs(np.mean(draws)) < 4 * np.std(draws) / np.sqrt(len(draws))


# ----------------------------------------------------------------------------------------------- stats
def test_stats_round_trip_and_metrics(tmp_path):
  rng = np.random.default_rng(0)
  ref, samples, logits = rng.normal(size=(50, 6)), rng.normal(size=(40, 6)) + 0.2, rng.normal(size=(40, 10))
  path = tmp_path / "sub" / "ref_stats.npz"
  evaluation.save_stats(path, ref)
  stats = evaluation.load_stats(path)
  np.testing.assert_array_equal(stats["pool_3"], ref.astype(np.float32))
  np.testing.assert_allclose(stats["mu"], ref.mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats["sigma"], np.cov(ref, rowvar=False), rtol=1e-12)
  metrics = evaluation.compute_metrics(samples, logits, stats)
  np.testing.assert_allclose(metrics["fid"], evaluation.fid_from_features(samples, ref), rtol=1e-10)
  assert metrics["inception_score"] == evaluation.inception_score(logits)
  assert metrics["kid"] == evaluation.kid(stats["pool_3"], samples)
  with pytest.raises(ValueError, match="different feature networks"):
    evaluation.compute_metrics(samples[:, :5], logits, stats)


def test_stats_file_errors(tmp_path):
  with pytest.raises(ValueError, match=r"do not exist: write it with `python main\.py --config .* --mode stats"):
    evaluation.load_stats(tmp_path / "missing.npz")
  (tmp_path / "corrupt.npz").write_bytes(b"\x00garbage")
  with pytest.raises(ValueError, match="unreadable .* delete the file and write it with"):
    evaluation.load_stats(tmp_path / "corrupt.npz")
  np.savez(tmp_path / "wrong.npz", pool_3=np.zeros((5, 3)), mu=np.zeros(4), sigma=np.zeros((3, 3)))
  with pytest.raises(ValueError, match="inconsistent shapes"):
    evaluation.load_stats(tmp_path / "wrong.npz")


def test_feature_stats_in_chunks_match_numpy():
  f = np.random.default_rng(0).normal(size=(23, 5)).astype(np.float32) * 3 + 1
  mu, sigma = evaluation.feature_stats(f, chunk=4)
  np.testing.assert_allclose(mu, f.astype(np.float64).mean(0), rtol=1e-13)
  np.testing.assert_allclose(sigma, np.cov(f.astype(np.float64), rowvar=False), rtol=1e-12, atol=1e-14)
  assert mu.dtype == sigma.dtype == np.float64


def test_metrics_without_logits_report_fid_and_kid_only():
  rng = np.random.default_rng(0)
  ref, samples = rng.normal(size=(30, 4)), rng.normal(size=(20, 4)) + 0.3
  stats = {"pool_3": ref, "mu": ref.mean(0), "sigma": np.cov(ref, rowvar=False)}
  for logits in (None, np.zeros((20, 0), np.float32)):  # (n, 0): the ImageNet Inception-v3's feature_fn
    metrics = evaluation.compute_metrics(samples, logits, stats)
    assert list(metrics) == ["fid", "kid"]
    np.testing.assert_allclose(metrics["fid"], evaluation.fid_from_features(samples, ref), rtol=1e-10)
    assert metrics["kid"] == evaluation.kid(ref, samples)
  with pytest.raises(ValueError, match="19 logits for 20 pool_3 features"):
    evaluation.compute_metrics(samples, rng.normal(size=(19, 10)), stats)


def _cifar(tmp_path):
  config = default_cifar10_configs.get_default_configs()
  config.eval.stats_dir = str(tmp_path)
  return config


def _lsun(tmp_path, size=256):
  from configs import default_lsun_configs  # pylint: disable=import-outside-toplevel
  config = default_lsun_configs.get_default_configs()
  config.data.update(image_size=size, category="church_outdoor")
  config.eval.stats_dir = str(tmp_path)
  return config


def test_2021_stats_files_are_read_and_found_by_their_names(tmp_path):
  # The 2021 release's files hold only the raw features: mu and sigma are computed on load, in float64.
  pool = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
  np.savez(tmp_path / "cifar10_stats.npz", pool_3=pool)
  stats = evaluation.load_stats(tmp_path / "cifar10_stats.npz")
  assert stats["network"] is None  # untagged
  np.testing.assert_array_equal(stats["pool_3"], pool)
  np.testing.assert_allclose(stats["mu"], pool.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats["sigma"], np.cov(pool.astype(np.float64), rowvar=False), rtol=1e-12, atol=1e-15)
  assert stats["mu"].dtype == stats["sigma"].dtype == np.float64

  config = _cifar(tmp_path)
  ours = str(tmp_path / "cifar10_32_stats.npz")
  assert evaluation.stats_path(config) == ours  # where --mode stats writes
  assert evaluation.stats_path_2021(config) == str(tmp_path / "cifar10_stats.npz")
  assert evaluation.reference_stats_path(config) == str(tmp_path / "cifar10_stats.npz")  # ours absent: 2021's
  ref = evaluation.load_reference_stats(config)  # < 256 px: assumed the FID Inception, as 2021 used
  assert ref["network"] == "fid_inception"
  np.testing.assert_array_equal(ref["mu"], stats["mu"])
  evaluation.save_stats(ours, pool[:10], network="fid_inception")
  assert evaluation.reference_stats_path(config) == ours  # ours, once it exists
  assert len(evaluation.load_reference_stats(config)["pool_3"]) == 10
  config.eval.stats_path = str(tmp_path / "cifar10_stats.npz")  # or any file, explicitly
  assert evaluation.stats_path(config) == evaluation.reference_stats_path(config) == config.eval.stats_path
  assert len(evaluation.load_reference_stats(config)["pool_3"]) == 40

  celeba = _cifar(tmp_path)
  celeba.data.update(dataset="CELEBA", image_size=64)
  assert evaluation.stats_path_2021(celeba) == str(tmp_path / "celeba_stats.npz")
  celeba.data.image_size = 128
  assert evaluation.stats_path_2021(celeba) is None  # 2021 had CelebA statistics at 64 px only
  lsun = _lsun(tmp_path)
  assert evaluation.stats_path_2021(lsun) == evaluation.stats_path(lsun) == str(
      tmp_path / "lsun_church_outdoor_256_stats.npz")


def test_stats_files_name_their_network_and_mix_ups_are_refused(tmp_path):
  pool = np.random.default_rng(1).normal(size=(12, 5))
  path = tmp_path / "s.npz"
  evaluation.save_stats(path, pool, network="imagenet_inception_v3")
  assert evaluation.load_stats(path)["network"] == "imagenet_inception_v3"
  assert evaluation.load_stats(path, network="imagenet_inception_v3")["network"] == "imagenet_inception_v3"
  with pytest.raises(ValueError, match="hold imagenet_inception_v3 features, not fid_inception ones"):
    evaluation.load_stats(path, network="fid_inception")
  with pytest.raises(ValueError, match="network='inception' is not one of"):
    evaluation.save_stats(path, pool, network="inception")

  # 256 px: the ImageNet Inception-v3. A tagged FID Inception file is refused, whatever its name.
  lsun = _lsun(tmp_path)
  evaluation.save_stats(evaluation.stats_path(lsun), pool, network="fid_inception")
  with pytest.raises(ValueError, match=r"hold fid_inception features, but this config's features come from "
                                       r"imagenet_inception_v3: write it with `python main.py"):
    evaluation.load_reference_stats(lsun)
  lsun.eval.feature_network = "fid_inception"  # unless the config asks for the FID Inception
  assert evaluation.load_reference_stats(lsun)["network"] == "fid_inception"

  # An untagged 2021 file (pool_3 only) at 256 px holds Inception-v3 features (2021's hub module).
  np.savez(evaluation.stats_path(lsun), pool_3=pool.astype(np.float32))
  with pytest.raises(ValueError, match=r"hold imagenet_inception_v3 features \(untagged: assumed, as 2021 did at 256 "
                                       r"px\), but this config's features come from fid_inception"):
    evaluation.load_reference_stats(lsun)
  lsun.eval.feature_network = ""
  assert evaluation.load_reference_stats(lsun)["network"] == "imagenet_inception_v3"
  # Untagged with mu / sigma: this code's files from before the tags, when 256 px used the FID Inception.
  evaluation.save_stats(evaluation.stats_path(lsun), pool)
  with pytest.raises(ValueError, match="untagged and hold mu / sigma: written before statistics named their network"):
    evaluation.load_reference_stats(lsun)
  # Below 256 px both rules agree: the FID Inception.
  small = _lsun(tmp_path, size=128)
  evaluation.save_stats(evaluation.stats_path(small), pool)
  assert evaluation.load_reference_stats(small)["network"] == "fid_inception"


def test_reference_stats_errors_say_what_to_do(tmp_path):
  config = _cifar(tmp_path)
  with pytest.raises(ValueError, match=r"cifar10_32_stats.npz' do not exist \(nor the 2021 release's "
                                       r".*cifar10_stats.npz'\): write it with `python main.py .* --mode stats"):
    evaluation.load_reference_stats(config)
  path = tmp_path / "cifar10_32_stats.npz"
  cases = [({"mu": np.zeros(3), "sigma": np.eye(3)}, "hold no 'pool_3' features"),
           ({"pool_3": np.zeros((5, 3)), "mu": np.zeros(3)}, "hold mu without sigma"),
           ({"pool_3": np.zeros((5, 3), np.int64)}, "not \\(n >= 2, features\\) floats"),
           ({"pool_3": np.zeros((1, 3))}, "pool_3 of shape \\(1, 3\\)"),
           ({"pool_3": np.zeros((5, 3)), "network": np.asarray("resnet")}, "unknown feature network"),
           ({"pool_3": np.zeros((5, 3)), "network": np.asarray(["fid_inception"])}, "unknown feature network")]
  for arrays, message in cases:
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
      evaluation.load_reference_stats(config)
    with pytest.raises(ValueError, match=message):
      evaluation.load_stats(path)


def test_stats_path_and_missing_inception_weights():
  config = default_cifar10_configs.get_default_configs()
  assert evaluation.stats_path(config).endswith("assets/stats/cifar10_32_stats.npz")
  config.eval.stats_dir = "/data/stats"
  config.data.dataset, config.data.image_size, config.data.category = "LSUN", 256, "church_outdoor"
  assert evaluation.stats_path(config) == "/data/stats/lsun_church_outdoor_256_stats.npz"
  with pytest.raises(ValueError, match="eval.inception_path is not set: download https://"):
    evaluation.get_feature_fn(default_cifar10_configs.get_default_configs())


# ------------------------------------------------------------------------------------ digits features
@pytest.fixture(scope="module")
def digits(tmp_path_factory):
  config = digits_config.get_config()
  config.eval.classifier_path = str(tmp_path_factory.mktemp("classifier") / "digits_classifier.npz")
  feature_fn = evaluation.get_feature_fn(config, batch_size=256)  # trains and caches the classifier
  return config, feature_fn


def _uint8_split(config, split):
  return digits_classifier._split(config, split)  # pylint: disable=protected-access


def test_digits_classifier_accuracy_and_cache(digits):
  config, _ = digits
  assert digits_classifier.evaluate_accuracy(config) > 0.95  # reloads the cached file
  params, info = digits_classifier.load(config.eval.classifier_path, config.data.image_size)
  assert info["test_accuracy"] > 0.95 and info["train_seconds"] > 0
  images, _ = _uint8_split(config, "test")
  out = digits_classifier.get_classifier_fn(params)(images[:8])
  assert out["pool_3"].shape == (8, digits_classifier.NUM_FEATURES) and out["logits"].shape == (8, 10)


def test_digits_fid_separates_real_from_noise(digits):
  config, feature_fn = digits
  train, test = feature_fn(_uint8_split(config, "train")[0]), feature_fn(_uint8_split(config, "test")[0])
  noise = np.random.default_rng(0).integers(0, 256, (297, 16, 16, 1)).astype(np.uint8)
  noise_feats = feature_fn(noise)
  fid_real = evaluation.fid_from_features(train["pool_3"], test["pool_3"])
  fid_noise = evaluation.fid_from_features(test["pool_3"], noise_feats["pool_3"])
  assert fid_real < 0.05 * fid_noise
  assert evaluation.kid(train["pool_3"], test["pool_3"]) < 0.05 * evaluation.kid(test["pool_3"], noise_feats["pool_3"])
  # Real test digits are confidently and evenly classified: IS near the 10 classes; noise is not.
  assert evaluation.inception_score(test["logits"]) > 8.0 > evaluation.inception_score(noise_feats["logits"])
  # Chunking and padding do not change the features.
  np.testing.assert_allclose(feature_fn(noise[:51])["pool_3"], noise_feats["pool_3"][:51], rtol=1e-5,
                             atol=1e-6)


def test_digits_feature_fn_and_cache_errors(digits, tmp_path):
  config, feature_fn = digits
  with pytest.raises(ValueError, match="uint8 images of shape"):
    feature_fn(np.zeros((2, 16, 16, 1), np.float32))
  (tmp_path / "bad.npz").write_bytes(b"corrupt")
  with pytest.raises(ValueError, match="digits classifier cache is unreadable .* delete"):
    digits_classifier.load(tmp_path / "bad.npz", 16)
  with pytest.raises(ValueError, match="not a version-1 classifier for 8px"):
    digits_classifier.load(config.eval.classifier_path, 8)
