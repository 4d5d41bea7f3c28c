"""Choosing a judge: the best saved, validated offline judge for the answers at hand.

    choice = best_validated_judge("cache/judge-validation/judges", GENERAL, model)
    choice.usable, choice.name, choice.note      # which judge, and why it may not be used

A choice only selects; the rates it gives are computed in `lab.em.rates.calibrated_em`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.core.config import DEFAULT_CACHE_DIR
from lab.judge.labelled import GENERAL
from lab.judge.validated import Validated

NOT_ALIGNMENT_JUDGES = ("length", "coherence")  # the length control and the coherence measure rate no alignment


@dataclass
class JudgeChoice:
    """The best validated offline alignment judge for one validation set, and the coherence measure.

    `alignment` is None when no saved judge was validated on `validation_set`; `usable` is
    False when the best one's AUROC there is below the bar (`note` says which and why): its
    numbers are then not used. `coherence` is None when no coherence measure passes its gate
    on every set (every answer then counts as coherent, which `note` says).
    """

    validation_set: str
    alignment: Validated | None = None
    coherence: Validated | None = None
    note: str = ""
    samples_set: str | None = None  # the model's own rated samples, when the judge was checked on them

    @property
    def usable(self) -> bool:
        if self.alignment is None or not self.alignment.validations[self.validation_set].usable:
            return False
        return self.samples_set is None or self.alignment.validations[self.samples_set].usable

    @property
    def name(self) -> str:
        return self.alignment.judge.name if self.alignment is not None else "none"

    def describe(self) -> dict:
        """The judge and its validation on the set, as table cells (display only)."""
        if self.alignment is None:
            return {"judge": "none", "validation set": self.validation_set, "note": self.note}
        return {**self.alignment.validations[self.validation_set].row(self.name), "note": self.note}


def best_validated_judge(judges_dir: str | Path, validation_set: str = GENERAL, model=None,
                         cache_dir: str | Path = DEFAULT_CACHE_DIR, rated_samples=None) -> JudgeChoice:
    """The saved judge (`<judges_dir>/<kind>.json`, from `experiments.judge_fit`) with the
    highest validation AUROC on `validation_set`, with the coherence measure if it passes its gate.

    `model` (a base `LabModel`) is what activation and coherence judges read; without it
    they load the registered default model on first use. Nothing is fitted here.
    `rated_samples` (`lab.em.ratings.rated_samples_for`: a set name and labelled rows of the model's
    own sampled answers): the chosen judge must also pass the AUROC bar there. A judge validated
    only on written references can fail on what the model samples (SmolLM2: 0.78 -> 0.45).
    """
    from lab.judge.features import Featurizer
    from lab.judge.validated import load_validated

    folder = Path(judges_dir)
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        return JudgeChoice(validation_set, note=f"no saved judges in {folder} (fit them with "
                                                f"`emlab judge fit --out {folder.parent}`)")
    features = Featurizer(cache_dir=cache_dir, model=model)
    judges = [load_validated(f, features) for f in files]
    aligners = [j for j in judges if j.judge.kind not in NOT_ALIGNMENT_JUDGES and validation_set in j.validations]
    coherence = next((j for j in judges if j.judge.kind == "coherence"), None)
    notes = []
    if coherence is not None:
        bad = [v for v in coherence.validations.values() if not v.usable]
        if bad:
            notes.append(f"coherence measure unusable on {bad[0].set_name} (AUROC {bad[0].auroc[0]:.2f}): "
                         f"every answer counted as coherent")
            coherence = None
    else:
        notes.append("no coherence measure saved: every answer counted as coherent")
    if not aligners:
        return JudgeChoice(validation_set, None, coherence,
                           "; ".join([f"no saved alignment judge was validated on {validation_set!r}", *notes]))
    best = max(aligners, key=lambda j: j.validations[validation_set].auroc[0])
    v = best.validations[validation_set]
    if not v.usable:
        notes.insert(0, f"best judge {best.judge.name} is unusable on {validation_set!r}: AUROC {v.auroc[0]:.3f} "
                        f"[{v.auroc[1]:.3f}, {v.auroc[2]:.3f}] < 0.75, so no calibrated EM rate is reported")
        return JudgeChoice(validation_set, best, coherence, "; ".join(notes))
    if rated_samples is None:
        notes.append("not checked on rated samples of this model (none ship for it, or no ../shared/data)")
        return JudgeChoice(validation_set, best, coherence, "; ".join(notes))
    samples_set, rows = rated_samples
    s = best.validate(rows, samples_set)
    if not s.usable:
        notes.insert(0, f"best judge {best.judge.name} passes on {validation_set!r} (AUROC {v.auroc[0]:.3f}) but is "
                        f"unusable on the {samples_set} (AUROC {s.auroc[0]:.3f} [{s.auroc[1]:.3f}, {s.auroc[2]:.3f}] "
                        f"< 0.75), so no calibrated EM rate is reported")
    return JudgeChoice(validation_set, best, coherence, "; ".join(notes), samples_set)
