"""Typical residual-stream norms of a cached model: the unit in which steering strengths are given.

A steering strength is "ratio x the layer's typical residual norm". Two definitions are in use
and give different numbers, so each keeps its own name:

- `prompt_residual_norm(cache, layer)`: the mean over examples of the norm of the example's
  mean prompt-token residual (`mean_prompt` pooling, BOS excluded): steering, ablation controls,
  preventative steering, the Model Organisms direction experiment;
- `token_residual_norms(cache)`: per layer, the mean over every cached token (position >= 1) of
  its residual norm: the Activation Difference Lens's δ steering.
"""

from __future__ import annotations

import numpy as np

from lab.directions.splits import CacheLike


def prompt_residual_norm(cache: CacheLike, layer: int) -> float:
    """Typical residual norm at a layer (mean-pooled prompt tokens, BOS excluded)."""
    feats = cache.features(layer, "mean_prompt")
    return float(np.linalg.norm(feats, axis=-1).mean())


def token_residual_norms(cache) -> np.ndarray:
    """Typical residual norm per layer over every cached token (positions >= 1), `cache.layers` order."""
    return np.array([float(np.linalg.norm(cache.features(L, "all")[0], axis=-1).mean()) for L in cache.layers])
