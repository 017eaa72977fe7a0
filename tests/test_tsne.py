"""analysis/tsne: penultimate features of the model's width, a seeded 2-D embedding that
keeps the classes' neighbourhoods, and panels on common axes (Fig. 8)."""

import numpy as np
import pytest

from siriib_jax.plotting import embedding_figure
from siriib_jax.analysis.tsne import embed, embed_models, penultimate_features, shared_limits
from tests.helpers import tiny_model


def _clusters(n_per_class=10, classes=3, dim=16, seed=0):
  """Well-separated Gaussian clusters: (N, dim) features and (N,) labels."""
  rng = np.random.default_rng(seed)
  centres = 10 * rng.normal(size=(classes, dim))
  labels = np.repeat(np.arange(classes), n_per_class)
  return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def test_features_have_the_width_of_the_models_last_stage():
  model, variables = tiny_model("resnet18", siriib=True)
  images = np.random.default_rng(0).uniform(0, 1, (5, 16, 16, 3)).astype(np.float32)
  features = penultimate_features(model, variables, images, batch_size=4)
  assert features.shape == (5, 64)  # ResNet-18's 512 channels × 1/8.
  assert np.all(np.isfinite(features))


def test_the_embedding_is_finite_seeded_and_keeps_the_classes_apart():
  features, labels = _clusters()
  # 500 iterations: the 250 of early exaggeration and 250 of the plain optimisation.
  first = embed(features, seed=3, max_iter=500)
  assert first.shape == (30, 2) and first.dtype == np.float32 and np.all(np.isfinite(first))
  np.testing.assert_array_equal(embed(features, seed=3, max_iter=500), first)
  # Each point's nearest neighbour in the plane is of its own class (rows kept in order).
  distances = np.linalg.norm(first[:, None] - first[None], axis=-1)
  np.fill_diagonal(distances, np.inf)
  assert np.mean(labels[distances.argmin(axis=1)] == labels) >= 0.9


def test_few_points_lower_the_perplexity_and_bad_input_is_refused():
  features, _ = _clusters(n_per_class=2)  # 6 points: perplexity 30 lowered to 5/3.
  assert embed(features, max_iter=250).shape == (6, 2)
  with pytest.raises(ValueError, match="N ≥ 4"):
    embed(features[:3])
  bad = features.copy()
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    embed(bad)
  with pytest.raises(ValueError, match="same points"):
    embed_models({"a": features, "b": features[:5]})


def test_both_models_panels_share_limits_that_hold_every_point():
  features, labels = _clusters()
  wide, _ = _clusters(seed=1, dim=32)
  panels = embed_models({"ResNet-18": features, "ResNet-18-SR": wide}, seed=0, max_iter=250)
  assert list(panels) == ["ResNet-18", "ResNet-18-SR"]
  np.testing.assert_array_equal(panels["ResNet-18"], embed(features, seed=0, max_iter=250))
  (x0, x1), (y0, y1) = limits = shared_limits(list(panels.values()))
  for points in panels.values():
    assert x0 < points[:, 0].min() and points[:, 0].max() < x1
    assert y0 < points[:, 1].min() and points[:, 1].max() < y1
  everything = np.concatenate(list(panels.values()))
  assert np.isclose(x1 - x0, 1.1 * np.ptp(everything[:, 0]))  # 5 % margin each side.
  figure = embedding_figure(panels, labels, limits)
  assert figure.axes[0].get_xlim() == figure.axes[1].get_xlim() == limits[0]
  assert figure.axes[0].get_ylim() == figure.axes[1].get_ylim() == limits[1]
  with pytest.raises(ValueError, match=r"\(N, 2\)"):
    shared_limits([np.zeros((3, 3))])
