"""Statistics: the numbers emlab reports and their 95% confidence intervals. No model involved.

Main nouns:

- `Estimate`: a value with its 95% CI and sample size. Every headline number (a rate, a Δbase
  score, an AUROC) travels as one and prints one way, `0.410 [0.331, 0.491]`. `mean_ci(values)`
  makes one from paired rows by bootstrap.
- the metrics that judge a direction (`auroc`, `separation`, `accuracy_at_midpoint`), vectorised
  over leading axes, numpy or torch alike, and `bootstrap_ci(metric, *arrays)`, which draws every
  replicate as one index matrix from numpy's seeded generator (the same replicates on any device).
- `Prevalence` (`corrected_rate`, `rogan_gladen`): a judge's flag rate corrected for the judge's
  measured sensitivity and specificity, with a bootstrap over both the judged answers and the
  validation answers.

Getting started::

    from lab.stats import auroc, bootstrap_ci, mean_ci

    mean_ci(organism - base)                         # Estimate: Δbase 0.410 [0.331, 0.491]
    bootstrap_ci(auroc, scores, labels, n_boot=1000) # (value, lo, hi) of a held-out AUROC

Modules: `estimate`, `metrics`, `prevalence`.
"""

from lab.core.lazy import face_names, lazy_face

FACE = {
    "estimate": "Estimate mean_ci format_ci",
    "metrics": "auroc separation accuracy_at_midpoint midpoint_threshold bootstrap_ci bootstrap_indices dense_ranks",
    "prevalence": "Prevalence corrected_rate rogan_gladen",
}
__all__ = face_names(FACE)
__getattr__, __dir__ = lazy_face(__name__, FACE)
