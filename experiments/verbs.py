"""The verb registry: every `emlab` verb, its module, its workflow phase and its one-line help.

Import-free (so `emlab --help` stays fast). A verb's module is `experiments.<verb with _>`
(`emlab sweep-layers` is `python -m experiments.sweep_layers`), its options are one config
dataclass, and its help is that config's docstring, whose first line is the one-line help here.
`RENAMED` keeps the old verb names and module paths running for one release: they run the new
verb, with their options translated, after one stderr line naming it.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

PHASES = ("Organisms", "Measure EM", "Look inside", "Intervene", "Report")


class Verb(NamedTuple):
    module: str
    phase: str
    help: str


VERBS: dict[str, Verb] = {
    "train": Verb("experiments.train", "Organisms",
                  "A LoRA organism (adapter folder + checkpoints) trained from a recipe; every flag overrides it."),
    "em-rates": Verb("experiments.em_rates", "Measure EM",
                     "EM rates with 95% CIs from answers: sampled from a model and judged by an LLM (--source "
                     "sample), rated by people (--source ratings), or already sampled and judged now by any judge "
                     "(--source answers)."),
    "em-organisms": Verb("experiments.em_organisms", "Measure EM",
                         "An EM table of the papers' organisms across checkpoints: trains, samples, judges with "
                         "validated judges, tabulates."),
    "judge fit": Verb("experiments.judge_fit", "Measure EM",
                      "Validated judges (embedding, activation, length, coherence) fitted on labelled answers, saved "
                      "with their validation table."),
    "judge validate": Verb("experiments.judge_validate", "Measure EM",
                           "A saved judge's AUROC, sensitivity and specificity with CIs on labelled answers (fits "
                           "nothing)."),
    "cache build": Verb("experiments.cache_build", "Look inside",
                        "An HDF5 residual-stream cache of a prompt set (content-addressed; a rerun is a no-op)."),
    "sweep-layers": Verb("experiments.sweep_layers", "Look inside",
                         "Held-out AUROC by layer for every direction method on a contrast, with the direction files."),
    "compare-poolings": Verb("experiments.compare_poolings", "Look inside",
                             "Held-out AUROC by layer per pooling (last, mean prompt, mean response, first-k) on a "
                             "contrast."),
    "transfer-directions": Verb("experiments.transfer_directions", "Look inside",
                                "AUROC of each model's direction on every other model's held-out split, and their "
                                "cosines by layer."),
    "project-traits": Verb("experiments.project_traits", "Look inside",
                           "Mean projections of held-out prompts on a trait vector, base vs organism, with CIs."),
    "diff-adapter": Verb("experiments.diff_adapter", "Look inside",
                         "The domain an adapter was trained on, read from activation differences on generic text (ADL)."),
    "identify-domains": Verb("experiments.identify_domains", "Look inside",
                             "ADL's domain guesses vs the truth over organisms and seeds, with accuracy CIs."),
    "checkpoints": Verb("experiments.checkpoints", "Look inside",
                        "Per-checkpoint measurements of training runs: judge-free EM (--measure em), shifts along "
                        "base-model directions (shifts), rank-1 adapter geometry and LoRA probes (adapters)."),
    "steer-refusal": Verb("experiments.steer_refusal", "Intervene",
                          "Refusal rates and log-odds with the refusal direction ablated and added, beside matched "
                          "random controls."),
    "steer-em": Verb("experiments.steer_em", "Intervene",
                     "The EM-score shift of a base model with an organism's misalignment direction added, by layer x "
                     "strength, beside random controls."),
    "ablate-em": Verb("experiments.ablate_em", "Intervene",
                      "Organisms' EM scores with misalignment directions ablated (own, transferred, random controls)."),
    "em-direction": Verb("experiments.em_direction", "Intervene",
                         "A misalignment direction fitted on an organism's own judged answers, and judged EM with it "
                         "ablated or added beside random controls."),
    "train-steered": Verb("experiments.train_steered", "Intervene",
                          "Organisms trained with the misalignment direction added (preventative steering), with their "
                          "EM vs ordinary and random-direction organisms."),
    "study": Verb("experiments.study", "Report",
                  "The whole study's report (figures/<name>/index.html) and results.json: organisms, EM, directions, "
                  "steering, each number with a CI and a control."),
    "report study": Verb("experiments.report_study", "Report",
                         "The study report re-rendered from a results.json (no model)."),
    "report diffing": Verb("experiments.report_diffing", "Report",
                           "The model-diffing report section (diffing.md + HTML) from the diffing verbs' summaries."),
}

# Verb groups (`emlab judge fit`): their own one-line help and phase in `emlab --help`.
GROUPS: dict[str, tuple[str, str]] = {
    "models": ("Organisms", "Registered offline models: list, install."),
    "judge": ("Measure EM", "Judges: fit and validate emlab's own, serve a local LLM judge."),
    "cache": ("Look inside", "HDF5 activation caches: build, ls, info, rm."),
    "report": ("Report", "Reports re-rendered from saved results: the study, model diffing."),
}


class Renamed(NamedTuple):
    """An old verb name: the verb it now is, its old module, and how its options translate."""

    new: str
    module: str  # the old `python -m experiments.<module>` path
    flags: dict[str, str] = {}  # old flag -> new flag (same value)
    prepend: tuple[str, ...] = ()  # arguments the new verb needs to do the old one's job


RENAMED: dict[str, Renamed] = {
    "eval": Renamed("em-rates", "em_eval", prepend=("--source", "sample")),
    "rated-samples": Renamed("em-rates", "rated_samples", prepend=("--source", "ratings")),
    "em-table": Renamed("em-organisms", "em_table"),
    "sweep": Renamed("sweep-layers", "layer_sweep"),
    "pooling": Renamed("compare-poolings", "pooling"),
    "transfer": Renamed("transfer-directions", "transfer"),
    "project": Renamed("project-traits", "trait_projection"),
    "diff": Renamed("diff-adapter", "diff"),
    "domain-id": Renamed("identify-domains", "domain_id"),
    "trajectory": Renamed("checkpoints", "em_trajectory", prepend=("--measure", "em")),
    "monitor": Renamed("checkpoints", "monitor", prepend=("--measure", "shifts")),
    "dynamics": Renamed("checkpoints", "dynamics", prepend=("--measure", "adapters")),
    "steer": Renamed("steer-refusal", "steer"),  # `--target em`: steer-em (see `translate`)
    "ablate": Renamed("ablate-em", "ablation"),
    "mo-direction": Renamed("em-direction", "mo_direction"),
    "preventative": Renamed("train-steered", "preventative"),
    "judge-validation": Renamed("judge fit", "judge_validation"),  # was only `emlab judge fit`
}

def translate(old: str, argv: list[str]) -> tuple[str, list[str], list[str]]:
    """(new verb, its argv, what changed) for an old verb name and its arguments."""
    spec = RENAMED[old]
    new, args, changed = spec.new, list(argv), []
    if old == "steer":
        target = _pop_option(args, "--target") or "refusal"
        new = "steer-em" if target == "em" else "steer-refusal"
    out: list[str] = []
    for arg in args:  # a renamed flag keeps its value (`--old V`, `--old=V`)
        flag, eq, value = arg.partition("=")
        if flag in spec.flags:
            changed.append(f"{flag} is now {spec.flags[flag]}")
            arg = spec.flags[flag] + eq + value
        out.append(arg)
    return new, [*spec.prepend, *out], changed


def _pop_option(args: list[str], flag: str) -> str | None:
    """Remove `flag VALUE` (or `flag=VALUE`) from args; its value, or None."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            value = args[i + 1]
            del args[i:i + 2]
            return value
        if a.startswith(flag + "="):
            del args[i]
            return a.split("=", 1)[1]
    return None


def notice(old_call: str, new_call: str, changed: list[str]) -> str:
    """The one stderr line an old name prints before running the new verb."""
    extra = "".join(f"; {c}" for c in changed)
    return f"`{old_call}` is now `{new_call}`{extra}; the old name goes in the next release"


def run_old(old: str, argv: list[str] | None = None, via_module: bool = False) -> None:
    """Run an old verb name as its new verb, after the one-line notice on stderr."""
    import importlib

    argv = sys.argv[1:] if argv is None else list(argv)
    new, args, changed = translate(old, argv)
    if via_module:
        old_call = f"python -m experiments.{RENAMED[old].module}"
        new_call = f"python -m {VERBS[new].module}"
    else:
        old_call, new_call = f"emlab {old}", f"emlab {new}"
    if old == "steer":  # the target picks the verb: say which
        old_call += " --target em" if new == "steer-em" else ""
    print(notice(old_call, new_call, changed), file=sys.stderr)
    importlib.import_module(VERBS[new].module).main(args)


OLD_MODULES = {spec.module: old for old, spec in RENAMED.items()}
