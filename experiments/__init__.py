"""Runnable experiments over `lab/` (python -m experiments.<name> --help).

Each experiment's config dataclass is its command line; `VERBS` maps `emlab <verb>` to the
module that defines it, so `emlab X --help` and `python -m experiments.X --help` are one
parser printing one text. (Kept here, import-free, so `emlab --help` stays fast.)
"""

VERBS: dict[str, tuple[str, str]] = {
    "train": ("experiments.train", "Train a LoRA model organism from a recipe (--recipe mo)."),
    "study": ("experiments.study", "Run the whole EM study and write its report (--quick: ~3 min)."),
    "steer": ("experiments.steer", "Steering sweeps with random controls (refusal, em)."),
    "ablate": ("experiments.ablation", "EM ablation: own, transferred, random directions."),
    "mo-direction": ("experiments.mo_direction", "Model Organisms direction from judged answers: ablation, addition, judged."),
    "trajectory": ("experiments.em_trajectory", "EM scores across training checkpoints."),
    "em-table": ("experiments.em_table", "The seed-003 EM table: organisms, checkpoints, validated judges, EM rates."),
    "rated-samples": ("experiments.rated_samples", "EM on rated samples: rater agreement, EM rates, judges checked on samples."),
    "eval": ("experiments.em_eval", "Evaluate a model for EM (answers, code/refusal rates, judged EM)."),
    "sweep": ("experiments.layer_sweep", "Layer sweep of direction methods on a contrast."),
    "pooling": ("experiments.pooling", "Compare poolings per layer."),
    "transfer": ("experiments.transfer", "Transfer directions across models."),
    "project": ("experiments.trait_projection", "Trait projections, base vs organism."),
    "diff": ("experiments.diff", "Which domain was an adapter trained on? Activation Difference Lens."),
    "preventative": ("experiments.preventative", "Preventative steering: train with the misalignment direction added."),
    "domain-id": ("experiments.domain_id", "Domain identification benchmark: ADL's guess vs the truth."),
    "dynamics": ("experiments.dynamics", "Rank-1 adapters over training (norm, local cosine, PCA) vs EM; LoRA probing."),
    "monitor": ("experiments.monitor", "Shift along EM / refusal / code-mode directions per checkpoint vs EM score."),
    "cache build": ("experiments.cache_build", "Cache residual streams of a prompt set (content-addressed)."),
}
