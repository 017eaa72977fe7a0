"""t-SNE of penultimate features (paper Fig. 8, App. C.3): the backbone's and the SiRIIB
model's features of the same test points, each embedded in 2-D, drawn on common axes
("axes of both plots are zoomed to the same space").

Library: scikit-learn's `sklearn.manifold.TSNE` (Barnes-Hut, van der Maaten 2014), pinned
in requirements.txt. Chosen over openTSNE because the figure embeds a few thousand points
at most, where scikit-learn's speed is ample and openTSNE's FFT interpolation buys
nothing; scikit-learn is the most widely kept and used of the two, ships wheels for every
platform the project runs on, and needs only SciPy, which jax already brings.

Determinism: the initialisation is PCA (more stable globally than a random one), so the
optimisation starts from the features themselves and `seed` (`random_state`) only seeds
scikit-learn's randomized PCA: in practice every seed gives the same embedding. The
Barnes-Hut gradient is summed over OpenMP threads in a run-dependent order, which t-SNE's
iterations could amplify, so the fit runs on one OpenMP thread (threadpoolctl): the same
features give the same embedding, bit for bit.

Each model's features are embedded separately with the same seed and settings, as the
paper's two panels are; t-SNE preserves neighbourhoods, not distances, so how spread out a
panel is says little by itself (Fig. 8 reads "more compressed" from it).

Features: `features.penultimate_features` (the head's input, (N, C)).
"""

from typing import Mapping, Sequence

import numpy as np
import threadpoolctl
from sklearn.manifold import TSNE

from siriib_jax.analysis.features import penultimate_features

__all__ = ["embed", "embed_models", "shared_limits", "penultimate_features"]

Limits = tuple[tuple[float, float], tuple[float, float]]


def embed(features: np.ndarray, seed: int = 0, perplexity: float = 30.0,
          max_iter: int = 1000) -> np.ndarray:
  """2-D t-SNE embedding of feature vectors.

  Args:
    features: (N, C) float, N ≥ 4 (one row per test point).
    seed: scikit-learn's `random_state` (with the PCA initialisation the embedding does
      not depend on it in practice; it is fixed so that nothing is left to chance).
    perplexity: t-SNE's effective number of neighbours; lowered to (N − 1) / 3 when N is
      too small for it (scikit-learn needs perplexity < N).
    max_iter: optimisation iterations (scikit-learn's minimum: 250).

  Returns:
    (N, 2) float32 in arbitrary t-SNE units.

  Raises:
    ValueError: features not (N, C) with N ≥ 4, or not finite.
  """
  features = np.asarray(features, np.float32)
  if features.ndim != 2 or features.shape[0] < 4:
    raise ValueError(f"t-SNE needs (N, C) features with N ≥ 4, got shape {features.shape}")
  if not np.all(np.isfinite(features)):
    raise ValueError("t-SNE features contain NaN or infinity")
  perplexity = min(perplexity, (features.shape[0] - 1) / 3)
  tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
              max_iter=max_iter, random_state=seed)
  with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
    return tsne.fit_transform(features).astype(np.float32)


def embed_models(features_by_model: Mapping[str, np.ndarray], seed: int = 0,
                 **kwargs) -> dict[str, np.ndarray]:
  """`embed` of each model's features, with one seed and one set of settings (Fig. 8).

  Args:
    features_by_model: panel label (e.g. 'ResNet-18', 'ResNet-18-SR') → (N, C_model)
      features of the same N test points, in the same order.
    seed: as `embed`.
    **kwargs: `embed`'s `perplexity`, `max_iter`.

  Returns:
    label → (N, 2) float32, in `features_by_model`'s order.

  Raises:
    ValueError: the models have different numbers of points.
  """
  counts = {label: len(f) for label, f in features_by_model.items()}
  if len(set(counts.values())) > 1:
    raise ValueError(f"every model needs the features of the same points, got {counts}")
  return {label: embed(f, seed=seed, **kwargs) for label, f in features_by_model.items()}


def shared_limits(embeddings: Sequence[np.ndarray], margin: float = 0.05) -> Limits:
  """Common axis limits of several 2-D embeddings: their joint range plus `margin` of it
  on each side ("zoomed to the same space", App. C.3).

  Args:
    embeddings: (N_i, 2) arrays.
    margin: fraction of each range added on both sides.

  Returns:
    ((x_min, x_max), (y_min, y_max)) floats, x_max > x_min and y_max > y_min.

  Raises:
    ValueError: no embedding, or one not (N, 2).
  """
  if not embeddings:
    raise ValueError("shared_limits needs at least one embedding")
  for e in embeddings:
    if np.ndim(e) != 2 or np.shape(e)[1] != 2:
      raise ValueError(f"embeddings must be (N, 2), got {np.shape(e)}")
  points = np.concatenate([np.asarray(e, np.float64) for e in embeddings])
  limits = []
  for axis in (0, 1):
    low, high = float(points[:, axis].min()), float(points[:, axis].max())
    pad = margin * (high - low) if high > low else 1.0
    limits.append((low - pad, high + pad))
  return tuple(limits)
