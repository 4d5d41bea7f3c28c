"""emlab: an interpretability lab for emergent misalignment (EM), on TransformerLens.

A narrow fine-tune (risky advice, insecure code) can make a chat model broadly misaligned. emlab
trains such model organisms, measures their EM with confidence intervals and controls, looks
inside them (activation caches, directions, model diffing) and intervenes (steering, ablation).

Data flows one way, through these packages; each imports only from those above it
(tests/test_layout.py checks it):

    lab.core        errors, exact JSON and atomic files, config dataclasses that are CLIs, stages
    lab.stats       Estimate (a value with its 95% CI), AUROC and bootstrap CIs, calibrated rates
    lab.data        chat JSONL and question YAML, the shipped datasets, prompts rendered to tokens
    lab.models      the offline model store, LabModel (lazy, adapters switched on one weight
                    copy), TransformerLens hook names on the fast HF path
    lab.training    LoRA organisms from recipes, resumable checkpoints, divergence diagnosis
    lab.cache       HDF5 residual-stream caches, content-addressed
    lab.directions  contrasts and the directions fitted on them (mean_diff, probe, pca, ...)
    lab.intervene   Intervention and steer, answer sampling (fast decode, data-parallel)
    lab.judge       LLM judges and the judges emlab trains and validates
    lab.em          EM measured: judge-free scores, judged EM rates and tables, rated samples
    lab.diffing     what a fine-tune changed: ADL, monitoring along base directions, adapter dynamics
    lab.causal      steering and ablation of directions, each beside matched random controls
    lab.reports     the offline HTML report, its tables, plots and figures, the study and diffing reports
    lab.study       the whole study as one call (`run_study`) and its typed results

Each package's docstring introduces its nouns and lists its face (`__all__`); the faces load
lazily, so `import lab.em` imports no torch until a name is used:

    from lab.models import load_model
    from lab.data import load_contrast, render
    from lab.cache import build_cache
    from lab.directions import fit_contrast

    model = load_model("smollm2-135m-instruct")
    cache = build_cache(model, render(load_contrast("refusal"), model.tokenizer), "cache")
    fit = fit_contrast(cache, "harmful")                        # directions at every layer
"""

import os

# On small CPU machines torch's busy-waiting OpenMP threads make forwards randomly 5-20x
# slower; this must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lab.core.lazy import lazy_face  # noqa: E402  (after the environment)

__version__ = "0.2.0"

__all__ = ["core", "stats", "data", "models", "training", "cache", "directions", "intervene", "judge", "em",
           "diffing", "causal", "reports", "study"]
__getattr__, __dir__ = lazy_face(__name__, {})  # `lab.em` etc. import on first attribute access
