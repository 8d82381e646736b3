"""Controllable generation with the PC sampler (Song et al. 2021, §5 and App. I): inpainting, colorization and
class-conditional sampling, all from an unconditional score.

- Inpainting imputes the unknown pixels: after every corrector and every predictor update, the known pixels
  are replaced by a fresh draw of the forward marginal p_t(x_t | data) at the time the state has reached.
  The update's mean (x_mean) gets the marginal's mean there, so the denoised result keeps the data exactly.
  This replacement is an approximation of conditioning, not exact conditioning: the unknown pixels only feel
  the known ones through the score at each step (see the tests for how far it gets on a Gaussian).
- Colorization is inpainting after an orthonormal change of colour basis whose first axis is the grey
  direction (1, 1, 1) / sqrt(3): that channel is known, the two colour channels are imputed. The SDEs here
  (VP, sub-VP, VE) have an isotropic drift, scalar diffusion and isotropic prior, so sampling in the rotated
  basis with the rotated score is the same sampler as in pixel space.
- Class-conditional sampling runs the PC sampler on score + scale * grad_x log p_t(y | x) (eq. 14), with
  log p_t(y | x) from a time-dependent classifier.

Inputs are checked in Python before anything is traced; the sampling itself is one jit-compiled
`lax.fori_loop` over the N time steps.
"""
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import correctors, parallel, pc_sampler, predictors
from score_sde.sampler_utils import expand

# The colour basis: row d is the d-th decoupled channel, y_d = sum_c DECOUPLE[d, c] x_c. Row 0 is the grey
# axis; rows 1 and 2 span the colours. (The 2021 code stores the transpose, rounded to float32.)
DECOUPLE = np.array([[1.0, 1.0, 1.0], [-2.0, 1.0, 1.0], [0.0, 1.0, -1.0]]) / np.sqrt([[3.0], [6.0], [2.0]])


def _mix(x, matrix):
  """out[..., i] = sum_j matrix[i, j] x[..., j], at full float32 precision on every backend."""
  out = jnp.dot(x.reshape(-1, 3), jnp.asarray(matrix.T, x.dtype), precision=jax.lax.Precision.HIGHEST)
  return out.reshape(x.shape)


def decouple(x):
  """Pixel colours (..., 3) to the decoupled basis (..., 3); channel 0 is sqrt(3) times the grey value."""
  return _mix(x, DECOUPLE)


def couple(y):
  """The inverse of `decouple` (the matrix is orthogonal)."""
  return _mix(y, DECOUPLE.T)


def _concrete(x):
  """x as a numpy array (gathered if it spans processes), or None while it is being traced (its values are
  unknown then)."""
  try:
    return parallel.to_host(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def _impute_loop(sde, score_fn, predictor, corrector, snr, n_steps, probability_flow, eps):
  """`run(rng, params, data, known) -> (x, x_mean)`: the PC sampler with the entries where `known` is True
  replaced by draws of p_t(x_t | data) after every update (their means in x_mean)."""
  predictor_obj = predictors.get_predictor(predictor)(sde, score_fn, probability_flow)
  corrector_obj = correctors.get_corrector(corrector)(sde, score_fn, snr, n_steps)
  # Step i corrects at times[i] and predicts to times[i + 1]; the last step lands on t = 0.
  times = np.append(np.linspace(sde.T, eps, sde.N), 0.0)

  def run(rng, params, data, known):
    batch, times_ = data.shape[0], jnp.asarray(times, data.dtype)

    def impute(rng, x, x_mean, t):
      mean, std = sde.marginal_prob(data, jnp.full((batch,), t, data.dtype))
      noisy = mean + expand(std, data) * jax.random.normal(rng, data.shape, data.dtype)
      return jnp.where(known, noisy, x), jnp.where(known, mean, x_mean)

    def body(i, carry):
      rng, x, x_mean = carry
      rng, corrector_rng, predictor_rng, rng_1, rng_2 = jax.random.split(rng, 5)
      t = jnp.full((batch,), times_[i], data.dtype)
      if corrector_obj.evals_per_step:  # no corrector, no update to follow
        x, x_mean = impute(rng_1, *corrector_obj.update_fn(corrector_rng, params, x, t), times_[i])
      x, x_mean = predictor_obj.update_fn(predictor_rng, params, x, t)
      x, x_mean = impute(rng_2, x, x_mean, times_[i + 1])
      return rng, x, x_mean

    rng, prior_rng, start_rng = jax.random.split(rng, 3)
    x = sde.prior_sampling(prior_rng, data.shape).astype(data.dtype)
    x, x_mean = impute(start_rng, x, x, times_[0])
    # The last replacement is at t = 0, where the marginal's mean is the data: x_mean keeps it exactly.
    _, x, x_mean = jax.lax.fori_loop(0, sde.N, body, (rng, x, x_mean))
    return x, x_mean

  return run


def get_pc_inpainter(sde, score_fn, predictor, corrector, inverse_scaler, snr, n_steps=1,
                     probability_flow=False, denoise=True, eps=1e-3):
  """The PC inpainter (Song et al. 2021, App. I.2).

  Args: as `pc_sampler.get_pc_sampler` (there is no `shape`: it is the data's).

  Returns:
    `inpaint(rng, params, data, mask) -> samples`: data (B, H, W, C) in model space (after the data scaler);
    mask of data's shape or broadcastable to it (e.g. (B, H, W, 1)), 1 where a pixel is known, 0 where it is
    to be filled in (its values are checked unless traced; traced, those above 0.5 count as known). The samples pass through `inverse_scaler`; with denoise=True their known pixels are
    inverse_scaler(data) exactly.
  """
  run = _impute_loop(sde, score_fn, predictor, corrector, snr, n_steps, probability_flow, eps)

  @jax.jit
  def _inpaint(rng, params, data, mask):
    x, x_mean = run(rng, params, data, mask > 0.5)
    return inverse_scaler(x_mean if denoise else x)

  def inpaint(rng, params, data, mask):
    data, mask = jnp.asarray(data), jnp.asarray(mask)
    if data.ndim < 2:
      raise ValueError(f"data must be a batch (B, H, W, C); got shape {data.shape}.")
    if mask.ndim != data.ndim or any(m not in (1, d) for m, d in zip(mask.shape, data.shape)):
      raise ValueError(f"mask has shape {mask.shape}; it must be data's shape {data.shape} or broadcast to it "
                       "(e.g. one mask for all channels, with C = 1).")
    values = _concrete(mask)
    if values is not None and not np.all((values == 0) | (values == 1)):
      raise ValueError(f"mask must hold only 0 (to fill in) and 1 (known); got values such as "
                       f"{np.unique(values[(values != 0) & (values != 1)])[:3]}.")
    return _inpaint(rng, params, data, mask)

  return inpaint


def get_pc_colorizer(sde, score_fn, predictor, corrector, inverse_scaler, snr, n_steps=1,
                     probability_flow=False, denoise=True, eps=1e-3):
  """The PC colorizer (Song et al. 2021, App. I.3): inpainting of the colour channels in the `DECOUPLE` basis.

  Returns:
    `colorize(rng, params, gray) -> samples`: gray (B, H, W, 3) in model space with the three channels equal
    (the grey value). Through an affine `inverse_scaler`, the samples' channel mean is inverse_scaler(gray)
    (exactly with denoise=True, up to float rounding).
  """
  rotated_score = lambda params, y, t, rng=None: decouple(score_fn(params, couple(y), t))
  run = _impute_loop(sde, rotated_score, predictor, corrector, snr, n_steps, probability_flow, eps)
  known = jnp.array([True, False, False])

  @jax.jit
  def _colorize(rng, params, gray):
    y, y_mean = run(rng, params, decouple(gray), known)
    return inverse_scaler(couple(y_mean if denoise else y))

  def colorize(rng, params, gray):
    gray = jnp.asarray(gray)
    if gray.ndim < 2 or gray.shape[-1] != 3:
      raise ValueError(f"gray must be (B, H, W, 3) with the grey value in all three channels; got shape "
                       f"{gray.shape}.")
    values = _concrete(gray)
    if values is not None:
      spread = np.max(np.abs(values - values[..., :1]))
      if spread > 1e-6 * (1.0 + np.max(np.abs(values))):
        raise ValueError(f"gray's three channels must be equal (one grey value per pixel); they differ by up to "
                         f"{spread:.3g}. Convert colour images to grey first.")
    return _colorize(rng, params, gray)

  return colorize


def get_pc_conditional_sampler(sde, score_fn, classifier_fn, shape, predictor, corrector, inverse_scaler, snr,
                               n_steps=1, probability_flow=False, denoise=True, eps=1e-3, guidance_scale=1.0):
  """Class-conditional PC sampling (Song et al. 2021, §5 and App. I.1) with a noise-conditional classifier.

  The predictor and corrector are built from the conditional score
    score_fn(params, x, t) + guidance_scale * grad_x log softmax(classifier_fn(classifier_params, x, t))[label],
  so this works for any SDE. `classifier_fn(classifier_params, x, t)` returns logits (B, num_classes) of the
  label given x at time t (wrap it to feed, e.g., the marginal std instead of t if it was trained so); it must
  treat the examples independently (no batch statistics), as the gradient is taken of the batch's sum.

  Returns:
    `sample(rng, params, classifier_params, labels) -> samples` of `shape`, passed through `inverse_scaler`;
    labels are integers in [0, num_classes), one per example.
  """
  shape = tuple(shape)
  classes = {}  # number of classes by the classifier parameters' structure, shapes and dtypes

  def num_classes(classifier_params):
    leaves, treedef = jax.tree_util.tree_flatten(classifier_params)
    key = (treedef, tuple((jnp.shape(leaf), jnp.result_type(leaf)) for leaf in leaves))
    if key not in classes:
      logits = jax.eval_shape(classifier_fn, classifier_params, jax.ShapeDtypeStruct(shape, jnp.float32),
                              jax.ShapeDtypeStruct(shape[:1], jnp.float32))
      if len(logits.shape) != 2 or logits.shape[0] != shape[0]:
        raise ValueError(f"classifier_fn must return logits (B, num_classes) = ({shape[0]}, K); got "
                         f"{logits.shape}.")
      classes[key] = logits.shape[1]
    return classes[key]

  def conditional_score(packed, x, t, rng=None):
    params, classifier_params, labels = packed

    def log_posterior(x):
      log_probs = jax.nn.log_softmax(classifier_fn(classifier_params, x, t), axis=-1)
      return jnp.sum(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))

    return score_fn(params, x, t) + guidance_scale * jax.grad(log_posterior)(x)

  sampler = pc_sampler.get_pc_sampler(sde, conditional_score, shape, predictor, corrector, inverse_scaler, snr,
                                      n_steps=n_steps, probability_flow=probability_flow, denoise=denoise, eps=eps)

  def sample(rng, params, classifier_params, labels):
    labels = jnp.asarray(labels)
    if labels.shape != shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"labels must be integers of shape ({shape[0]},), one per example; got {labels.dtype} of "
                       f"shape {labels.shape}.")
    values, k = _concrete(labels), num_classes(classifier_params)
    if values is not None and (values.min() < 0 or values.max() >= k):
      raise ValueError(f"labels must lie in [0, {k}) for this classifier; got values from "
                       f"{values.min()} to {values.max()}.")
    return sampler(rng, (params, classifier_params, labels))[0]

  return sample
