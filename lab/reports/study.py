"""The study's offline HTML report, built from its typed results (`lab.study.results.StudyResults`).

The index page carries the headline table (EM rates with CIs, the best directions with their
random control, steering and ablation effects beside their controls) and the key figure inline;
each section has its own page. Another section joins with one call, e.g. model diffing:

    report = build_study_report(results)
    report.add(diffing_section(diffs), headline=[HeadlineRow(...)])   # lab.reports.diffing
    report.write(out)

`findings(results)` states what was and was not found, in plain sentences. Display strings are
made here and in `lab.reports.tables`, never stored in the results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from lab.core.config import config_dict
from lab.reports import Answers, Block, Html, Image, Panel, Section, Table, Text, write_report
from lab.reports.tables import best_layer_rows, cells
from lab.stats.estimate import Estimate

if TYPE_CHECKING:
    from lab.causal.steer import SteerRow
    from lab.study.results import StudyResults


def _img(folder: str, name: str, caption: str) -> list:
    path = Path(folder) / name
    return [Image(path, caption)] if path.exists() else []


def overview(results: StudyResults) -> Section:
    cfg = results.config
    settings = {**config_dict(cfg), **asdict(results.profile)}
    return Section("overview", "Overview and findings", [
        Panel("Headline", [("model", cfg.model), ("organisms", ", ".join(results.organisms)),
                           ("profile", "quick" if cfg.quick else "default"), ("judge", _judge_label(results))]),
        Text("What was and was not found, each with its 95% bootstrap CI (held-out splits, paired against the "
             "base model, random-direction controls beside every direction and steering result):"),
        Table("Findings", [{"finding": f} for f in results.findings]),
        Table("Settings", [{"setting": k, "value": str(v)} for k, v in settings.items()]),
    ])


def training(results: StudyResults) -> Section:
    rows = [{"organism": n, "steps": len(o.losses), "first loss": o.losses[0] if o.losses else None,
             "last loss": o.losses[-1] if o.losses else None, "adapter": o.adapter}
            for n, o in results.organisms.items()]
    return Section("training", "Model organisms", [
        Text("LoRA r16/alpha32 on q,k,v,o; loss on assistant tokens; trained on the train split of each shipped "
             "narrow dataset (the held-out split is used for the in-domain score)."),
        Table("Training", rows)])


def score_rows(results: StudyResults) -> list[dict]:
    return [{"organism": r.organism, "score": r.score, "Δbase [95% CI]": str(r.estimate), "n": r.estimate.n}
            for r in results.em_scores]


def em_scores(results: StudyResults) -> Section:
    blocks = [Text("Judge-free EM scores: mean per-token log-prob of a misaligned minus an aligned reference answer, "
                   "organism minus base, paired by question. General questions are outside medicine and finance; "
                   "their references are matched in length and style, in the model's usual style and the training "
                   "data's terse style, so style transfer cannot pass for misalignment."),
              Table("EM scores", score_rows(results))]
    blocks.append(Text("Judged EM rates come from the best validated offline judge: the saved judge with the highest "
                       "validation AUROC on the labelled set matching these questions, corrected for its measured "
                       "sensitivity and specificity (Rogan–Gladen; the bootstrap resamples judged and validation "
                       "answers). A judge below AUROC 0.75 there gives no rate."))
    blocks.append(Table("Offline judge and its validation", [judge_cells(results)]))
    for name, e in results.evals.items():
        line = {"model": name, "answers": e.n_answers, "code-mode rate": str(e.code_mode_rate),
                "refusal rate": str(e.refusal_rate)}
        for crit, em in e.em.items():
            line[f"EM ({crit})"] = str(em.estimate)
        c = e.calibrated
        if c is not None:
            line["EM calibrated (offline judge)"] = str(c.corrected) if c.corrected is not None else "not measured"
            line["EM raw (offline judge)"] = str(c.raw) if c.raw is not None else ""
        blocks.append(Table(f"Generated answers: {name}", [line]))
        blocks.append(Answers(f"Example answers: {name}", [x.to_json() for x in e.examples[:8]],
                              ["question", "answer", "code", "refusal"]))
    return Section("em", "EM measurements", blocks)


def judge_cells(results: StudyResults) -> dict:
    j = results.judge
    if j.validation is not None:
        return {**j.validation.row(j.judge), "note": j.note}
    return {"judge": j.judge, **({"validation set": j.validation_set} if j.validation_set else {}), "note": j.note}


def trajectories(results: StudyResults) -> Section:
    blocks = [Text("Judge-free scores at each checkpoint (step 0 = base model).")]
    for name, t in results.trajectories.items():
        blocks += _img(t.out, "trajectory.png", f"{name}: EM scores across training")
        blocks.append(Table(name, [cells(r) for r in t.rows]))
    return Section("trajectory", "EM trajectories", blocks)


def directions(results: StudyResults) -> Section:
    blocks = [Text("Directions fitted on the train split and scored on held-out examples (AUROC with 95% CI); the "
                   "random direction is the control (its mean over layers, and its value at each method's best layer).")]
    for contrast, s in results.sweeps.items():
        blocks.append(Table(f"Layer sweep: {contrast}", best_layer_rows(s.config.methods, s.best, s.random)))
        blocks += _img(s.out, "auroc_by_layer.png", f"{contrast}: held-out AUROC by layer")
    for name, m in results.model_contrast.items():
        blocks.append(Table(f"Base vs {name} on the same general prompts (base vs organism)",
                            best_layer_rows(m.methods, m.best, m.random)))
    return Section("directions", "Directions and layer sweeps", blocks)


def pooling_section(results: StudyResults) -> Section:
    p = results.pooling
    if p is None:
        return Section("pooling", "Pooling comparison", [Text("not run")])
    return Section("pooling", "Pooling comparison", [Table("Best layer per pooling", [cells(x) for x in p.best]),
                                                     *_img(p.out, "auroc_by_pooling.png", "AUROC by pooling")])


def transfer_section(results: StudyResults) -> Section:
    blocks = []
    for contrast, t in results.transfer.items():
        blocks.append(Table(f"Transfer: {contrast}", [cells(x) for x in t.pairs]))
        blocks += _img(t.out, "cosine_by_layer.png", f"{contrast}: cosine between models' directions by layer")
    for name, p in results.projections.items():
        blocks.append(Table(f"Refusal-vector projections, base vs {name} (layer {p.layer})", [cells(r) for r in p.rows]))
    return Section("transfer", "Transfer and trait projections", blocks)


def steering_section(results: StudyResults) -> Section:
    r = results.steer_refusal
    blocks = [Text("Refusal validation (Arditi et al. 2024): the refusal direction ablated at every layer on held-out "
                   "harmful requests, and added at one layer on held-out benign ones, beside random directions of "
                   "the same norm. Refusal rate from greedy answers; log-odds = refusal reply minus compliant reply "
                   "(teacher forced); coherence = change in log-prob per token of neutral text."),
              Table("Refusal steering", [cells(x) for x in r.rows])]
    blocks += _img(r.out, "tradeoff.png", "refusal steering: effect vs coherence")
    if r.selection:
        blocks.append(Text(f"The direction's layer ({r.best_layer}) was chosen as Arditi et al. do: the candidate "
                           "whose ablation lowers refusal log-odds most on train prompts, coherence floor kept."))
        blocks.append(Table("Refusal direction selection (train prompts)", [cells(x) for x in r.selection]))
    e = results.steer_em
    if e is not None:
        blocks.append(Table("Adding the misalignment direction to the base model", [cells(x) for x in e.rows]))
        blocks += _img(e.out, "tradeoff.png", "EM steering: style-matched EM score vs coherence")
    else:
        blocks.append(Text("The addition experiment (misalignment direction added to the base model) runs in the "
                           "default profile, not in --quick."))
    a = results.ablation
    blocks.append(Text("EM ablation (the Model Organisms table): each organism's misalignment direction, the other "
                       "organism's (transferred) and random directions of the same norm, removed at every layer; "
                       "judge-free scores on general questions no direction was fitted on, and on the organism's "
                       "held-out in-domain questions. Zeroing a difference-of-means projection also moves aligned "
                       "text (which sits below zero) toward misaligned; `emlab ablate --ablation mean` restores the "
                       "aligned level instead."))
    blocks.append(Table("EM ablation (own, transferred, random)", [cells(x) for x in a.rows]))
    blocks += _img(a.out, "ablation.png", "EM ablation")
    return Section("steering", "Steering and ablation", blocks)


def answers_section(results: StudyResults) -> Section:
    import json

    path = Path(results.steer_refusal.out) / "answers.json"
    blocks = [Text("Greedy answers to the same held-out prompts: unsteered, steered, and random-direction control.")]
    if path.exists():
        answers = json.loads(path.read_text())
        for kind in ("ablate on harmful", "add on benign"):
            conds = {k: v for k, v in answers.items() if k.startswith(kind)}
            if not conds:
                continue
            keys = list(conds)[:3]
            n = min(len(conds[k]) for k in keys)
            rows = [{"prompt": conds[keys[0]][i]["question"], **{k.split(":")[1] + " " + ":".join(k.split(":")[2:]):
                                                                 conds[k][i]["answer"] for k in keys}} for i in range(min(n, 6))]
            blocks.append(Answers(kind, rows, list(rows[0]) if rows else []))
    return Section("answers", "Side-by-side answers", blocks)


def visuals_section(results: StudyResults) -> Section:
    v = results.visuals
    blocks = [Text(f"Layer {v.layer} (the misalignment direction's best layer): attention patterns of every head, and "
                   "the per-token projection of the residual stream onto the misalignment direction, for the same "
                   "prompt and misaligned answer, base model vs organism.")]
    for key in ("attention_base", "attention_organism", "projection_base", "projection_organism"):
        if key in v.files and Path(v.files[key]).exists():
            blocks.append(Html(Path(v.files[key]).read_text(), key.replace("_", " ")))
    return Section("visuals", "Attention and per-token projections", blocks)


@dataclass(frozen=True)
class HeadlineRow:
    """One line of the index's headline table: a measurement, its value (with CI), its control."""

    measurement: str
    value: Estimate | str
    control: str
    note: str

    def cells(self) -> dict[str, str]:
        return {"measurement": self.measurement, "value [95% CI]": str(self.value), "control": self.control,
                "note": self.note}


HEADLINE_COLUMNS = ["measurement", "value [95% CI]", "control", "note"]


@dataclass
class StudyReport:
    """The study's report before it is written: sections, the index's headline table and key figure.

    `add(section, headline=rows)` is the hook for sections computed outside the study's results
    (model diffing: `lab.reports.diffing.diffing_section`): the section gets its page and its
    `HeadlineRow`s join the index's headline table.
    """

    title: str
    summary: str
    sections: list[Section]
    headline: list[HeadlineRow] = field(default_factory=list)
    figure: Image | None = None

    def add(self, section: Section, headline: Sequence[HeadlineRow] = ()) -> None:
        self.sections.append(section)
        self.headline.extend(headline)

    def index_blocks(self) -> list[Block]:
        blocks: list[Block] = [Table("Headline results (95% CIs; held-out splits; each beside its control)",
                                     [h.cells() for h in self.headline], HEADLINE_COLUMNS)]
        return blocks + ([self.figure] if self.figure is not None else [])

    def write(self, out: Path) -> Path:
        return write_report(out, self.title, self.sections, self.summary, self.index_blocks())


def _judge_label(results: StudyResults) -> str:
    j = results.judge
    usable = j.validation is not None and j.validation.usable
    offline = f"{j.judge} ({'usable' if usable else 'not usable'} on general questions)"
    llm = results.config.judge_base_url
    return f"LLM {llm}; offline {offline}" if llm else f"offline {offline}"


def em_headline(results: StudyResults) -> list[HeadlineRow]:
    """Calibrated EM rate per model (or why there is none), and each organism's judge-free scores."""
    rows = []
    base = results.evals.get("base")
    base_rate = base.calibrated.corrected if base is not None and base.calibrated is not None else None
    for name, e in results.evals.items():
        c = e.calibrated
        if c is None:
            continue
        if c.corrected is not None:
            rows.append(HeadlineRow(f"EM rate, {name} (judge {c.judge}, Rogan–Gladen)", c.corrected,
                                    "" if name == "base" or base_rate is None else f"base {base_rate}",
                                    f"raw {c.raw}, n={c.raw.n}"))
        else:
            rows.append(HeadlineRow(f"EM rate, {name}", "not measured", "", c.note))
    for d in results.em_scores:
        if d.score.startswith(("in-domain", "general, usual")):
            rows.append(HeadlineRow(f"judge-free EM score, {d.organism}: {d.score}", d.estimate,
                                    "base model (Δbase, paired)", d.estimate.verdict()))
    return rows


def directions_headline(results: StudyResults) -> list[HeadlineRow]:
    rows = []
    for contrast, s in results.sweeps.items():
        for b in s.best:
            if b.method in ("mean_diff", "probe"):
                c = cells(b)
                rows.append(HeadlineRow(f"direction {contrast}: {b.method}, best layer {b.layer}",
                                        f"AUROC {b.auroc}", f"random @ layer {c['random @ layer']}",
                                        f"held out, n train/test {c['n train/test']}"))
    return rows


def _controls(values: list[float], digits: int = 3) -> str:
    return ", ".join(f"{v:+.{digits}f}" for v in values) or "none"


def steering_headline(results: StudyResults) -> list[HeadlineRow]:
    out = []
    ablated = [x for x in results.steer_refusal.rows if x.experiment == "ablate on harmful"]
    own = next((x for x in ablated if x.condition == "refusal dir"), None)
    if own is not None:
        rand = [x.logodds_shift.value for x in ablated if x.condition.startswith("random")]
        out.append(HeadlineRow("refusal direction ablated (every layer): refusal log-odds Δ", own.logodds_shift,
                               f"random: {_controls(rand)}", f"refusal rate {own.refusal}"))
    e = results.steer_em
    if e is not None and e.pick is not None:
        p: SteerRow = e.pick
        rand = [x.em_shift.value for x in e.rows if x.condition.startswith("random") and x.layer == p.layer
                and x.ratio == p.ratio]
        out.append(HeadlineRow(f"misalignment direction added to base (layer {p.layer} x{p.ratio}): EM score Δ",
                               p.em_shift, f"random: {_controls(rand)}", f"coherence Δ {p.coherence.value:+.2f}"))
    rows = results.ablation.rows
    for x in rows:
        if x.condition != "ablate own" or x.score not in ("usual", "in-domain"):
            continue
        rand = [y.change.value for y in rows if y.organism == x.organism and y.score == x.score
                and y.condition.startswith("ablate random")]
        out.append(HeadlineRow(f"own direction ablated from {x.organism} ({x.score}): EM score change", x.change,
                               f"random: {_controls(rand)}",
                               "reduction " + (f"{x.reduction:.0%}" if x.reduction is not None else "n/a (no EM to remove)")))
    return out


def key_figure(results: StudyResults) -> Image | None:
    """The first key figure that exists: the answer-contrast sweep, else the ablation bars."""
    candidates = []
    if "general_answers" in results.sweeps:
        candidates.append((results.sweeps["general_answers"].out, "auroc_by_layer.png",
                           "misaligned vs aligned answers (organism): held-out AUROC by layer, every method beside a "
                           "random direction"))
    candidates.append((results.ablation.out, "ablation.png", "EM score under ablation: own, transferred and random "
                                                             "directions"))
    for folder, name, caption in candidates:
        path = Path(folder) / name
        if path.exists():
            return Image(path, caption)
    return None


def findings(results: StudyResults) -> list[str]:
    """Plain statements of what was and was not found, each with its number and CI."""
    lines = [f"{r.organism}: {r.score}: Δbase {r.estimate} -> {r.estimate.verdict()}" for r in results.em_scores]
    for contrast, s in results.sweeps.items():
        probe = next((b for b in s.best if b.method == "probe"), None)
        if probe is not None:
            lines.append(f"{contrast} direction: probe best layer {probe.layer}, held-out AUROC {probe.auroc} "
                         f"(random @ layer {cells(probe)['random @ layer']})")
    for name, e in results.evals.items():
        lines.append(f"{name}: code-mode rate {e.code_mode_rate} on {e.code_mode_rate.n} general answers")
        if e.em:
            lines.append(f"{name}: judged EM rate (betley) {e.em['betley'].estimate}")
    for name, e in results.evals.items():
        c = e.calibrated
        if c is not None and c.corrected is not None:
            lines.append(f"{name}: calibrated EM rate (judge {c.judge}, Rogan–Gladen on {c.validation_set!r}) "
                         f"{c.corrected} (raw {c.raw})")
    notes = {e.calibrated.note for e in results.evals.values()
             if e.calibrated is not None and e.calibrated.note and e.calibrated.corrected is None}
    lines += [f"no calibrated EM rate: {n}" for n in sorted(notes)]
    if not any(e.em or (e.calibrated is not None and e.calibrated.corrected is not None)
               for e in results.evals.values()):
        lines.append("no usable judge: EM rates were not measured (judge-free scores only)")
    return lines


def build_study_report(results: StudyResults) -> StudyReport:
    sections = [overview(results), training(results), em_scores(results), trajectories(results), directions(results),
                pooling_section(results), transfer_section(results), steering_section(results),
                answers_section(results), visuals_section(results)]
    summary = (f"Emergent-misalignment study of {results.config.model}: organisms "
               f"{', '.join(results.organisms)}. Every number has a 95% bootstrap CI and a control.")
    headline = em_headline(results) + directions_headline(results) + steering_headline(results)
    return StudyReport(f"emlab study: {results.config.name}", summary, sections, headline, key_figure(results))


def write_study_report(results: StudyResults, out: Path, extra: Sequence[Section] = ()) -> Path:
    report = build_study_report(results)
    for section in extra:
        report.add(section)
    return report.write(out)
