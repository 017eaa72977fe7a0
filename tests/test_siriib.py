"""models/siriib: the SR block's invariants (paper §3.2, SPEC §1) and
`model.siriib.orthogonality` (issue 14): exact mode keeps W's isometry, penalty mode reaches
it on R_τ, both modes have the SPEC §6 counts, a checkpoint of one mode is refused by the
other, and a bad value is a clear error."""

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax.checkpointing import CheckpointError, Checkpoints
from siriib_jax.complexity import count_complexity
from siriib_jax.config_errors import ConfigError
from siriib_jax.losses import orthogonality_error, orthogonality_penalty
from siriib_jax.models import SRBlock, create_model, modulate_amplitude
from siriib_jax.models.siriib import ORTHOGONAL_MODULE, sr_weight_matrices
from siriib_jax.svd import orthonormal_rows


def _channel_pixel_singular_values(images):
  """Singular values of each image's (channels × pixels) matrix, descending."""
  b, h, w, c = images.shape
  matrices = jnp.swapaxes(images.reshape(b, h * w, c), 1, 2)
  return jnp.linalg.svd(matrices, compute_uv=False)


def _orthogonal_branch(params, x, orthogonality="penalty"):
  """y = x · W, the SR block's singular-vector branch, through the block's own layer."""
  _, state = SRBlock(orthogonality=orthogonality).apply(
      {"params": params, "batch_stats": _stats(params)}, x, train=False,
      capture_intermediates=True, mutable=["intermediates"])
  return state["intermediates"][ORTHOGONAL_MODULE[orthogonality]]["__call__"][0]


def _stats(params):
  c = params["fuse_bn"]["scale"].shape[0]
  return {"fuse_bn": {"mean": jnp.zeros(c), "var": jnp.ones(c)}}


@pytest.fixture
def sr_params():
  x = jnp.zeros((1, 8, 8, 3))
  return SRBlock(orthogonality="penalty").init(jax.random.key(0), x, train=False)["params"]


def test_orthonormal_rows_keep_singular_values_and_random_rows_do_not(sr_params):
  x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3))
  expected = _channel_pixel_singular_values(x)

  y = _orthogonal_branch(sr_params, x)  # The initial kernel has orthonormal rows.
  assert y.shape == (4, 8, 8, 12)
  np.testing.assert_allclose(_channel_pixel_singular_values(y)[:, :3], expected, rtol=1e-4)
  np.testing.assert_allclose(_channel_pixel_singular_values(y)[:, 3:], 0.0, atol=1e-3)

  random_kernel = jax.random.normal(jax.random.key(2), (1, 1, 3, 12))
  params = flax.core.copy(sr_params, {"orthogonal": {"kernel": random_kernel}})
  y_random = _orthogonal_branch(params, x)
  assert not np.allclose(_channel_pixel_singular_values(y_random)[:, :3], expected, rtol=0.05)


def test_orthogonality_penalty_is_zero_exactly_for_orthonormal_rows():
  selection = jnp.eye(3, 12).reshape(1, 1, 3, 12)  # Orthonormal rows, exactly representable.
  params = {"sr0": {"orthogonal": {"kernel": selection}},
            "sr1": {"orthogonal": {"kernel": -selection[..., ::-1]}}}
  assert float(orthogonality_penalty(params)) == 0.0


def test_orthogonality_penalty_is_positive_for_random_rows_and_descends_to_zero():
  kernel = 0.5 * jax.random.normal(jax.random.key(0), (1, 1, 3, 12))
  params = {"siriib": {"sr0": {"orthogonal": {"kernel": kernel}}},
            "backbone": {"conv": {"kernel": jnp.ones((3, 3, 3, 4))}}}
  start = float(orthogonality_penalty(params))
  assert start > 0.1

  grad_fn = jax.jit(jax.grad(orthogonality_penalty))
  for _ in range(300):
    grads = grad_fn(params)
    params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
  assert float(orthogonality_penalty(params)) < 1e-8
  w = params["siriib"]["sr0"]["orthogonal"]["kernel"].reshape(3, 12)
  np.testing.assert_allclose(w @ w.T, np.eye(3), atol=1e-4)
  # The penalty reads only SR kernels: the backbone conv is untouched.
  chex.assert_trees_all_equal(params["backbone"]["conv"]["kernel"], jnp.ones((3, 3, 3, 4)))


def test_identity_amplitude_modulation_is_an_fft_round_trip():
  y = jax.random.normal(jax.random.key(0), (2, 8, 6, 12))
  np.testing.assert_allclose(modulate_amplitude(y, lambda a: a), y, atol=1e-5)
  # A non-identity modulation changes the signal (the test can fail).
  assert not np.allclose(modulate_amplitude(y, lambda a: 2 * a + 1), y, atol=1e-2)


def test_identity_amplitude_conv_in_the_block_returns_the_input(sr_params):
  x = jax.random.uniform(jax.random.key(3), (2, 8, 8, 3))
  params = flax.core.copy(sr_params, {
      "amplitude": {"kernel": jnp.eye(12).reshape(1, 1, 12, 12), "bias": jnp.zeros(12)}})
  _, state = SRBlock(orthogonality="penalty").apply(
      {"params": params, "batch_stats": _stats(params)}, x, train=False,
      capture_intermediates=True, mutable=["intermediates"])
  y = state["intermediates"]["orthogonal"]["__call__"][0]
  fuse_input = jnp.concatenate([y, y], axis=-1)
  # fuse(concat[y, z]) with z == y: compare against the block's fuse conv on [y, y].
  expected = jnp.einsum("bhwc,cd->bhwd", fuse_input, params["fuse"]["kernel"][0, 0])
  fused = state["intermediates"]["fuse"]["__call__"][0]
  np.testing.assert_allclose(fused, expected, atol=1e-4)


def test_amplitude_gradient_is_finite_where_the_spectrum_vanishes():
  grad = jax.grad(lambda y: jnp.sum(modulate_amplitude(y, lambda a: 3 * a) ** 2))(
      jnp.zeros((1, 4, 4, 2)))
  assert bool(jnp.all(jnp.isfinite(grad)))


def _push_w_around(orthogonality, steps=50, learning_rate=1.0):
  """`steps` plain SGD steps on every SR-block parameter for a loss that pulls y = x · W
  towards x · B, B a random 3 × 12 matrix far from orthonormal rows. Returns the initial
  and the final parameters and whether every gradient was finite."""
  x = jax.random.uniform(jax.random.key(4), (2, 8, 8, 3))
  target = jnp.einsum("bhwc,cd->bhwd", x, 3.0 * jax.random.normal(jax.random.key(5), (3, 12)))
  params = SRBlock(orthogonality=orthogonality).init(jax.random.key(0), x, train=False)["params"]

  @jax.jit
  def grad_fn(p):
    return jax.grad(lambda p: jnp.mean((_orthogonal_branch(p, x, orthogonality) - target) ** 2))(p)

  start, finite = params, True
  for _ in range(steps):
    grads = grad_fn(params)
    finite = finite and all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    params = jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
  return start, params, finite


def test_exact_mode_keeps_singular_values_after_sgd_at_lr_1_that_pushes_w():
  start, params, finite = _push_w_around("exact")
  assert finite
  name = ORTHOGONAL_MODULE["exact"]
  assert set(params) >= {name} and "orthogonal" not in params
  moved = float(jnp.linalg.norm(params[name]["kernel"] - start[name]["kernel"]))
  assert moved > 0.5  # The loss did push the parameter far.
  # A random 3 × N channel × pixel matrix (N = 100 pixels) keeps its singular values.
  x = jax.random.normal(jax.random.key(6), (1, 10, 10, 3))
  expected = _channel_pixel_singular_values(x)
  y = _orthogonal_branch(params, x, "exact")
  np.testing.assert_allclose(_channel_pixel_singular_values(y)[:, :3], expected, rtol=1e-5)
  assert float(orthogonality_error(params)) < 1e-5
  assert float(orthogonality_penalty(params)) < 1e-10  # R_τ, still computed: ~0.


def test_penalty_mode_under_the_same_push_loses_the_isometry():
  # The control of the test above: a free W is pushed off orthonormal rows.
  _, params, _ = _push_w_around("penalty")
  x = jax.random.normal(jax.random.key(6), (1, 10, 10, 3))
  y = _orthogonal_branch(params, x, "penalty")
  assert not np.allclose(_channel_pixel_singular_values(y)[:, :3],
                         _channel_pixel_singular_values(x), rtol=1e-2)
  assert float(orthogonality_error(params)) > 0.1


def test_penalty_mode_reaches_orthonormality_from_a_perturbed_start_on_r_tau_alone(sr_params):
  kernel = sr_params["orthogonal"]["kernel"]
  perturbed = kernel + 0.3 * jax.random.normal(jax.random.key(7), kernel.shape)
  params = flax.core.copy(sr_params, {"orthogonal": {"kernel": perturbed}})
  assert float(orthogonality_error(params)) > 0.3

  grad_fn = jax.jit(jax.grad(orthogonality_penalty))
  for _ in range(300):
    params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grad_fn(params))
  assert float(orthogonality_error(params)) < 1e-4
  x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3))
  np.testing.assert_allclose(_channel_pixel_singular_values(_orthogonal_branch(params, x))[:, :3],
                             _channel_pixel_singular_values(x), rtol=1e-4)


def test_exact_mode_at_init_uses_its_orthogonally_initialised_parameter_as_w():
  # The polar map is the identity on orthonormal rows: at initialisation the exact block
  # computes y = x · A with its stored A, as a penalty block computes y = x · W.
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  exact = SRBlock(orthogonality="exact").init(jax.random.key(0), x, train=False)["params"]
  kernel = exact[ORTHOGONAL_MODULE["exact"]]["kernel"]
  assert kernel.shape == (1, 1, 3, 12)  # 36 numbers in either mode.
  np.testing.assert_allclose(_orthogonal_branch(exact, x, "exact"),
                             jnp.einsum("bhwc,cd->bhwd", x, kernel[0, 0]), atol=1e-5)


def test_orthonormal_rows_is_the_polar_factor_with_a_finite_exact_gradient():
  a = jax.random.normal(jax.random.key(0), (3, 12))
  u, _, vt = np.linalg.svd(np.asarray(a, np.float64), full_matrices=False)
  np.testing.assert_allclose(orthonormal_rows(a), u @ vt, atol=1e-5)
  np.testing.assert_allclose(orthonormal_rows(2.5 * a), u @ vt, atol=1e-5)  # Scale-free.
  weights = jax.random.normal(jax.random.key(1), (3, 12))
  loss = lambda a: jnp.sum(jnp.sin(orthonormal_rows(a) * weights))
  direction = jax.random.normal(jax.random.key(2), (3, 12))
  # Orthonormal rows (repeated singular values, where jnp.linalg.svd's own gradient is not
  # finite) and a generic matrix: the gradient matches central differences.
  for point in (jnp.eye(3, 12), a):
    grad = jax.grad(loss)(point)
    assert bool(jnp.all(jnp.isfinite(grad)))
    numeric = (loss(point + 1e-2 * direction) - loss(point - 1e-2 * direction)) / 2e-2
    np.testing.assert_allclose(float(jnp.sum(grad * direction)), float(numeric), rtol=2e-2)
  # Nearly rank-deficient: W still has orthonormal rows and the gradient stays finite.
  nearly_deficient = a.at[2].set(a[1] + 1e-5 * a[2])
  w = orthonormal_rows(nearly_deficient)
  np.testing.assert_allclose(w @ w.T, np.eye(3), atol=1e-5)
  assert bool(jnp.all(jnp.isfinite(jax.grad(loss)(nearly_deficient))))
  with pytest.raises(ValueError, match="at most as many rows"):
    orthonormal_rows(jnp.ones((4, 3)))


def test_sr_weight_matrices_reads_both_modes():
  exact_kernel = 2.0 * jnp.eye(3, 12).reshape(1, 1, 3, 12)
  params = {"siriib": {"sr0": {"orthogonal": {"kernel": exact_kernel}},
                       "sr1": {"orthogonal_polar": {"kernel": exact_kernel}}},
            "backbone": {"conv": {"kernel": jnp.ones((3, 3, 3, 4))}}}
  matrices = sr_weight_matrices(params)
  assert set(matrices) == {"siriib/sr0", "siriib/sr1"}
  np.testing.assert_allclose(matrices["siriib/sr0"], 2.0 * np.eye(3, 12))  # Free W as stored.
  np.testing.assert_allclose(matrices["siriib/sr1"], np.eye(3, 12), atol=1e-6)  # Polar factor.
  np.testing.assert_allclose(float(orthogonality_error(params)), np.sqrt(3) * 3, rtol=1e-6)
  assert orthogonality_error({"backbone": {"conv": {"kernel": jnp.ones((3, 3, 3, 4))}}}) is None



@pytest.mark.parametrize("name,params_m,macs_g", [("resnet18", 11.35, 0.73),
                                                   ("wrn28_10", 36.79, 5.57)])
def test_both_orthogonality_modes_have_the_spec_counts(config, name, params_m, macs_g):
  config.model.name = name
  counts = {}
  for mode in ("penalty", "exact"):
    config.model.siriib.orthogonality = mode
    counts[mode] = count_complexity(create_model(config.model, 32), 32)
  assert counts["exact"] == counts["penalty"]
  assert abs(counts["exact"].params / 1e6 - params_m) <= 0.015
  assert abs(counts["exact"].macs / 1e9 - macs_g) <= 0.02


@flax.struct.dataclass
class _State:
  params: dict
  batch_stats: dict


def _sr_state(orthogonality: str) -> _State:
  variables = SRBlock(orthogonality=orthogonality).init(
      jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
  return _State({"siriib": {"sr0": variables["params"]}},
                {"siriib": {"sr0": variables["batch_stats"]}})


def _abstract(state):
  return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), state)


@pytest.mark.parametrize("saved,restored", [("penalty", "exact"), ("exact", "penalty")])
def test_a_checkpoint_of_one_mode_is_refused_by_the_other(tmp_path, saved, restored):
  state = _sr_state(saved)
  checkpoints = Checkpoints(str(tmp_path), keep=1)
  checkpoints.save_last(1, state)
  checkpoints.close()

  checkpoints = Checkpoints(str(tmp_path), keep=1)
  same = checkpoints.restore_latest(_abstract(state))  # The control: the same mode loads.
  jax.tree.map(np.testing.assert_array_equal, same.params, state.params)
  with pytest.raises(CheckpointError, match="orthogonal"):
    checkpoints.restore_latest(_abstract(_sr_state(restored)))
  checkpoints.close()


def test_a_misspelt_orthogonality_is_a_config_error_naming_the_closest(config):
  config.model.siriib.orthogonality = "exakt"
  with pytest.raises(ConfigError, match=r"model\.siriib\.orthogonality.*did you mean 'exact'"):
    create_model(config.model, 32)
