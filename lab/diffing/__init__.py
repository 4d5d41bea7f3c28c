"""Diffing: what a fine-tune changed, read from activations, checkpoints and adapter weights.

Three views of the difference between an organism and its base model:

- **the Activation Difference Lens** (`adl`; Minder et al. 2025): the mean activation difference
  δ per layer on the first tokens of *generic* text (`generic_texts`, `first_tokens`,
  `mean_delta`), read through the base model's logit lens (`Lens`). Its top tokens name the
  domain a narrow fine-tune was trained on; `score_domains` scores candidate domains (`DOMAINS`)
  and `AdlResult.guess` picks one. `steer_with_delta` steers the base model with δ, beside a
  random direction of the same norm, and reads the answers. The entry point is the function
  `lab.diffing.adl.adl(base_cache, organism_cache, lens)` (not on this face: its name is the
  module's).
- **monitoring** (`monitoring`; Chen et al. 2025, persona vectors): directions fitted on the
  *base* model (`fit_monitors` -> `Monitor`: EM, refusal, code mode) and, per checkpoint, the
  mean paired `Shift` along each beside a random direction, set against the checkpoint's
  judge-free EM score (`measure` -> `ModelPoint`, `correlations`, `per_question`).
- **training dynamics of rank-1 adapters** (`dynamics`; Turner et al. 2025): an adapter's vector
  across checkpoints (`read_rank1`, `AdapterPath`): its norm, the cosine between checkpoints
  (`local_cosine`, where a dip marks the phase transition), its PCA path (`pca_path`); and LoRA
  probing (`adapter_scalars`, `lora_probe`): which adapters carry the domain.

- **EM across checkpoints** (`checkpoints`): every checkpoint's judge-free EM, Δbase paired by
  question (`checkpoint_em`, cached per model by `em_score` / `in_domain_score`), and the
  organism's `trajectory` -> `TrajectoryResult` of `CheckpointScore` rows.

Each verb's whole analysis lives beside these: `adapter_diff` (`DiffConfig`, `diff_adapter`),
`domain_id` (`identify_domains`), `monitoring` (`MonitorConfig`, `monitor_checkpoints`) and
`training_dynamics` (`DynamicsConfig`, `rank1_dynamics`).

Everything a model contributes is cached (HDF5 activations, JSON scores), so a rerun reads files.

Getting started::

    from lab.diffing import Lens, first_tokens, generic_texts, text_cache
    from lab.diffing.adl import adl

    prompts = first_tokens(generic_texts(), base.tokenizer)
    result = adl(text_cache(base, prompts, "cache"), text_cache(organism, prompts, "cache"),
                 Lens.from_files(base_folder, base.tokenizer))
    result.guess, result.top_tokens[12]              # "medical", [("patient", 3.1), ...]

Modules: `adl`, `monitoring`, `dynamics`, `checkpoints`, `adapter_diff`, `domain_id`, `training_dynamics`.
"""

from lab.core.lazy import face_names, lazy_face

FACE = {
    "adl": """DEFAULT_K GENERIC_TEXTS DOMAINS generic_texts generic_chat first_tokens text_cache mean_acts mean_delta
        Lens parse_domains middle_layers scored_layers DomainScore AdlResult score_domains SteerRow
        steer_with_delta""",
    "monitoring": """MONITORED Monitor Shift fit_monitors monitor_cache shift correlation_ci ModelPoint measure
        correlations per_question MonitorConfig MonitorRun monitor_checkpoints""",
    "checkpoints": """EmScore em_score in_domain_score base_scores checkpoint_em TrajectoryConfig CheckpointScore
        TrajectoryResult trajectory""",
    "adapter_diff": "DiffConfig diff_adapter",
    "domain_id": "DomainIdConfig DomainIdRun identify_domains",
    "training_dynamics": "DynamicsConfig DynamicsRun rank1_dynamics",
    "dynamics": """Rank1 read_rank1 AdapterPath local_cosine transition PcaPath pca_path adapter_scalars ProbeResult
        lora_probe""",
}
__all__ = face_names(FACE)
__getattr__, __dir__ = lazy_face(__name__, FACE)
