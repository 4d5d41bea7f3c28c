"""Contrast directions in the residual stream: fit, compare, save, load, project.

A *direction* is one unit vector per layer that separates two groups of examples, e.g.
misaligned vs aligned answers. The package, in the order data flows through it:

    contrasts   the named labelled example sets (`CONTRASTS`: refusal, code_mode, answer
                contrasts), `ensure_cache` / `contrast_cache` (their activation cache, built
                once) and `FeatureView` (a `CacheLike` over one or more caches).
    options     `AnalysisOptions`: the options every analysis verb shares (model, caches, split).

    splits      `CacheLike` (what a cache must offer), `split_contrast` / `split_examples`:
                a contrast's labels and its seeded train/test split by example id.
    validation  checks on features and labels; the device rule (results live where the
                features live).
    solvers     the five methods (mean_diff, probe, pca, gradient, random), callable on
                arrays or tensors of shape (n, d) or (layers, n, d); `logistic` holds the
                probe's batched Newton and L-BFGS solvers.
    fit         `fit_contrast(cache, positive_label, ...) -> Fit(rows, directions, split)`,
                the one entry point: split, fit all methods on all layers, score held out.
    record      `Direction` (vectors + model identity + `FitRecord`), saved as safetensors.
    from_answers
                `direction_from_answers(judged, organism, cache_dir)`: the Model Organisms
                direction, fitted on a model's own judged answers (misaligned vs aligned).

    norms       the typical residual norm, the unit of steering strengths (two named definitions).

The analyses built on fits, each a config (its verb's command line) and a typed result:
    sweep       `sweep_layers` -> `SweepResult`: every method at every layer, `best_layer` picks
                (`BestLayer`, beside the random direction at that layer) and the `RandomBaseline`.
    pooling     `compare_poolings` -> `PoolingResult`: the best layer per pooling and method.
    transfer    `transfer_directions` -> `TransferResult`: directions scored across models.
    projection  `project_traits` -> `ProjectionResult`: held-out projections, base vs organism.

Features come from `lab.cache.ActivationCache`, which already leaves out position 0 (BOS).
"""

from lab.directions.contrasts import CONTRASTS, Contrast, FeatureView, contrast_cache, contrast_examples, ensure_cache
from lab.directions.fit import Fit, Row, evaluate, fit_contrast
from lab.directions.from_answers import (AnswerCounts, AnswerDirection, JudgedAnswerLike, answer_label,
                                         direction_from_answers)
from lab.directions.logistic import logistic_fit
from lab.directions.norms import prompt_residual_norm, token_residual_norms
from lab.directions.options import AnalysisOptions
from lab.directions.pooling import PoolingBest, PoolingConfig, PoolingResult, compare_poolings
from lab.directions.projection import ProjectionConfig, ProjectionResult, ProjectionRow, project_traits
from lab.directions.sweep import (BestLayer, LayerScore, RandomBaseline, SweepConfig, SweepResult, best_layer,
                                  best_layers, sweep_layers)
from lab.directions.transfer import TransferConfig, TransferPair, TransferResult, transfer_directions
from lab.directions.record import FORMAT, HOOK_TEMPLATE, VERSION, Direction, FitRecord
from lab.directions.solvers import (
    DEFAULT_METHODS,
    METHODS,
    fit_methods,
    gradient,
    mean_diff,
    pca,
    probe,
    random,
)
from lab.directions.splits import CacheLike, Split, split_contrast, split_examples
from lab.directions.validation import MIN_PER_CLASS, MIN_TEST_PER_CLASS, validate

__all__ = [
    "AnalysisOptions", "CONTRASTS", "Contrast", "FeatureView", "contrast_cache", "contrast_examples", "ensure_cache",
    "prompt_residual_norm", "token_residual_norms",
    "SweepConfig", "SweepResult", "LayerScore", "BestLayer", "RandomBaseline", "best_layer", "best_layers", "sweep_layers",
    "PoolingConfig", "PoolingBest", "PoolingResult", "compare_poolings", "TransferConfig", "TransferPair",
    "TransferResult", "transfer_directions", "ProjectionConfig", "ProjectionRow", "ProjectionResult", "project_traits",
    "AnswerCounts", "AnswerDirection", "JudgedAnswerLike", "answer_label", "direction_from_answers",
    "CacheLike", "DEFAULT_METHODS", "Direction", "FORMAT", "Fit", "FitRecord", "HOOK_TEMPLATE", "METHODS",
    "MIN_PER_CLASS", "MIN_TEST_PER_CLASS", "Row", "Split", "VERSION", "evaluate", "fit_contrast", "fit_methods",
    "gradient", "logistic_fit", "mean_diff", "pca", "probe", "random", "split_contrast", "split_examples", "validate",
]
