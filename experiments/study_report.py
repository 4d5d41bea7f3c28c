"""Turn a study's results (stage outputs) into the offline HTML report (lab.reports).

The index page carries the headline table (EM rates with CIs, the best directions with their
random control, steering and ablation effects beside their controls) and the key figure inline;
each section has its own page. Another section joins with one call, e.g. model diffing:

    report = build_study_report(results)
    report.add(diffing_section(diffs), headline=[...rows for the index table...])   # lab.reports.diffing
    report.write(out)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from lab.stats.estimate import Estimate, format_ci
from lab.reports import Answers, Block, Html, Image, Panel, Section, Table, Text, write_report
from lab.em.judge_free import ScoreDelta
from lab.em.rates import EmRate


def _img(folder: str, name: str, caption: str) -> list:
    path = Path(folder) / name
    return [Image(path, caption)] if path.exists() else []


def _ci_rows(rows: list[dict], value: str, keys: list[str], digits: int = 3) -> list[dict]:
    return [{**{k: r.get(k) for k in keys},
             f"{value} [95% CI]": format_ci(r[value], r[f"{value}_lo"], r[f"{value}_hi"], digits)} for r in rows]


def overview(results: dict) -> Section:
    cfg = results["config"]
    items = [(f, "") for f in results["findings"]] if "findings" in results else []
    return Section("overview", "Overview and findings", [
        Panel("Headline", [("model", cfg["model"]), ("organisms", ", ".join(results["organisms"])),
                           ("profile", "quick" if cfg["quick"] else "default"),
                           ("judge", _judge_label(results))]),
        Text("What was and was not found, each with its 95% bootstrap CI (held-out splits, paired against the "
             "base model, random-direction controls beside every direction and steering result):"),
        Table("Findings", [{"finding": f} for f, _ in items]),
        Table("Settings", [{"setting": k, "value": str(v)} for k, v in {**cfg, **results["profile"]}.items()]),
    ])


def training(results: dict) -> Section:
    rows = [{"organism": n, "steps": len(o["losses"]), "first loss": o["losses"][0] if o["losses"] else None,
             "last loss": o["losses"][-1] if o["losses"] else None, "adapter": o["adapter"]}
            for n, o in results["organisms"].items()]
    return Section("training", "Model organisms", [
        Text("LoRA r16/alpha32 on q,k,v,o; loss on assistant tokens; trained on the train split of each shipped "
             "narrow dataset (the held-out split is used for the in-domain score)."),
        Table("Training", rows)])


def em_scores(results: dict) -> Section:
    rows = [{"organism": r.organism, "score": r.score, "Δbase [95% CI]": str(r.estimate), "n": r.estimate.n}
            for r in map(ScoreDelta.from_json, results["em_scores"])]
    blocks = [Text("Judge-free EM scores: mean per-token log-prob of a misaligned minus an aligned reference answer, "
                   "organism minus base, paired by question. General questions are outside medicine and finance; "
                   "their references are matched in length and style, in the model's usual style and the training "
                   "data's terse style, so style transfer cannot pass for misalignment."),
              Table("EM scores", rows)]
    j = results.get("judge")
    if j:
        blocks.append(Text("Judged EM rates come from the best validated offline judge: the saved judge with the highest "
                           "validation AUROC on the labelled set matching these questions, corrected for its measured "
                           "sensitivity and specificity (Rogan–Gladen; the bootstrap resamples judged and validation "
                           "answers). A judge below AUROC 0.75 there gives no rate."))
        blocks.append(Table("Offline judge and its validation", [j]))
    for name, e in results["evals"].items():
        line = {"model": name, "answers": e["n_answers"], "code-mode rate": str(Estimate.from_json(e["code_mode_rate"])),
                "refusal rate": str(Estimate.from_json(e["refusal_rate"]))}
        for crit, em in e.get("em", {}).items():
            line[f"EM ({crit})"] = str(EmRate.from_json(em).estimate)
        c = e.get("calibrated_em")
        if c is not None:
            line["EM calibrated (offline judge)"] = str(Estimate.from_json(c["corrected"])) if "corrected" in c else "not measured"
            line["EM raw (offline judge)"] = str(Estimate.from_json(c["raw"])) if "raw" in c else ""
        blocks.append(Table(f"Generated answers: {name}", [line]))
        blocks.append(Answers(f"Example answers: {name}", e["examples"][:8], ["question", "answer", "code", "refusal"]))
    return Section("em", "EM measurements", blocks)


def trajectories(results: dict) -> Section:
    blocks = [Text("Judge-free scores at each checkpoint (step 0 = base model).")]
    for name, t in results["trajectories"].items():
        blocks += _img(t["out"], "trajectory.png", f"{name}: EM scores across training")
        blocks.append(Table(name, _ci_rows(t["rows"], "value", ["step", "score"])))
    return Section("trajectory", "EM trajectories", blocks)


def directions(results: dict) -> Section:
    blocks = [Text("Directions fitted on the train split and scored on held-out examples (AUROC with 95% CI); the "
                   "random direction is the control (its mean over layers, and its value at each method's best layer).")]
    for contrast, s in results["sweeps"].items():
        blocks.append(Table(f"Layer sweep: {contrast}", s["best"]))
        blocks += _img(s["out"], "auroc_by_layer.png", f"{contrast}: held-out AUROC by layer")
    for name, m in results["model_contrast"].items():
        blocks.append(Table(f"Base vs {name} on the same general prompts (seed 002's contrast)", m["best"]))
    return Section("directions", "Directions and layer sweeps", blocks)


def pooling_section(results: dict) -> Section:
    p = results.get("pooling")
    if not p:
        return Section("pooling", "Pooling comparison", [Text("not run")])
    return Section("pooling", "Pooling comparison", [Table("Best layer per pooling", p["rows"]),
                                                     *_img(p["out"], "auroc_by_pooling.png", "AUROC by pooling")])


def transfer_section(results: dict) -> Section:
    blocks = []
    for contrast, t in results["transfer"].items():
        blocks.append(Table(f"Transfer: {contrast}", t["rows"]))
        blocks += _img(t["out"], "cosine_by_layer.png", f"{contrast}: cosine between models' directions by layer")
    for name, p in results["projections"].items():
        blocks.append(Table(f"Refusal-vector projections, base vs {name} (layer {p['layer']})",
                            [{"prompts": r["prompts"], "model": r["model"], "n": r["n"],
                              "mean projection [95% CI]": format_ci(r["mean projection"], r["lo"], r["hi"], 2)}
                             for r in p["rows"]]))
    return Section("transfer", "Transfer and trait projections", blocks)


def steering_section(results: dict) -> Section:
    blocks = []
    r = results["steer_refusal"]
    blocks.append(Text("Refusal validation (Arditi et al. 2024): the refusal direction ablated at every layer on held-out "
                       "harmful requests, and added at one layer on held-out benign ones, beside random directions of "
                       "the same norm. Refusal rate from greedy answers; log-odds = refusal reply minus compliant reply "
                       "(teacher forced); coherence = change in log-prob per token of neutral text."))
    blocks.append(Table("Refusal steering", [
        {"experiment": x["experiment"], "condition": x["condition"], "layer": x["layer"], "ratio": x["ratio"],
         "refusal rate": format_ci(x["refusal"], x["refusal_lo"], x["refusal_hi"]),
         "log-odds Δ": format_ci(x["logodds_shift"], x["logodds_shift_lo"], x["logodds_shift_hi"], 2),
         "coherence Δ": format_ci(x["coherence"], x["coherence_lo"], x["coherence_hi"], 2)} for x in r["rows"]]))
    blocks += _img(r["out"], "tradeoff.png", "refusal steering: effect vs coherence")
    if r.get("selection"):
        blocks.append(Text(f"The direction's layer ({r['best_layer']}) was chosen as Arditi et al. do: the candidate "
                           "whose ablation lowers refusal log-odds most on train prompts, coherence floor kept."))
        blocks.append(Table("Refusal direction selection (train prompts)", [
            {"layer": x["layer"], "log-odds Δ": f"{x['logodds_shift']:+.3f}", "coherence Δ": f"{x['coherence']:+.3f}"}
            for x in r["selection"]]))
    e = results.get("steer_em")
    if e:
        blocks.append(Table("Adding the misalignment direction to the base model", _ci_rows(
            e["rows"], "em_shift", ["condition", "layer", "ratio", "coherence"])))
        blocks += _img(e["out"], "tradeoff.png", "EM steering: style-matched EM score vs coherence")
    else:
        blocks.append(Text("The addition experiment (misalignment direction added to the base model) runs in the "
                           "default profile, not in --quick."))
    a = results["ablation"]
    blocks.append(Text("EM ablation (the Model Organisms table): each organism's misalignment direction, the other "
                       "organism's (transferred) and random directions of the same norm, removed at every layer; "
                       "judge-free scores on general questions no direction was fitted on, and on the organism's "
                       "held-out in-domain questions. Zeroing a difference-of-means projection also moves aligned "
                       "text (which sits below zero) toward misaligned; `emlab ablate --ablation mean` restores the "
                       "aligned level instead."))
    blocks.append(Table("EM ablation (own, transferred, random)", [
        {"organism": x["organism"], "score": x.get("score", x.get("style")), "condition": x["condition"],
         "EM score Δbase [95% CI]": format_ci(x["em_dbase"], x["em_dbase_lo"], x["em_dbase_hi"]),
         "reduction": f"{x['reduction']:.0%}" if x.get("reduction") is not None else "n/a (no EM to remove)"}
        for x in a["rows"]]))
    blocks += _img(a["out"], "ablation.png", "EM ablation")
    return Section("steering", "Steering and ablation", blocks)


def answers_section(results: dict) -> Section:
    import json

    path = Path(results["steer_refusal"]["out"]) / "answers.json"
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


def visuals_section(results: dict) -> Section:
    v = results["visuals"]
    blocks = [Text(f"Layer {v['layer']} (the misalignment direction's best layer): attention patterns of every head, and "
                   "the per-token projection of the residual stream onto the misalignment direction, for the same "
                   "prompt and misaligned answer, base model vs organism.")]
    for key in ("attention_base", "attention_organism", "projection_base", "projection_organism"):
        if key in v and Path(v[key]).exists():
            blocks.append(Html(Path(v[key]).read_text(), key.replace("_", " ")))
    return Section("visuals", "Attention and per-token projections", blocks)


HEADLINE_COLUMNS = ["measurement", "value [95% CI]", "control", "note"]
KEY_FIGURES = (("sweeps", "general_answers", "auroc_by_layer.png",
                "misaligned vs aligned answers (organism): held-out AUROC by layer, every method beside a random direction"),
               ("ablation", None, "ablation.png", "EM score under ablation: own, transferred and random directions"))


@dataclass
class StudyReport:
    """The study's report before it is written: sections, the index's headline table and key figure.

    `add(section, headline=rows)` is the hook for sections computed outside the study's results
    (model diffing: `lab.reports.diffing.diffing_section`): the section gets its page and its rows
    (keys of `HEADLINE_COLUMNS`) join the index's headline table.
    """

    title: str
    summary: str
    sections: list[Section]
    headline: list[dict] = field(default_factory=list)
    figure: Image | None = None

    def add(self, section: Section, headline: Sequence[dict] = ()) -> None:
        self.sections.append(section)
        self.headline.extend(headline)

    def index_blocks(self) -> list[Block]:
        blocks: list[Block] = [Table("Headline results (95% CIs; held-out splits; each beside its control)",
                                     self.headline, HEADLINE_COLUMNS)]
        return blocks + ([self.figure] if self.figure is not None else [])

    def write(self, out: Path) -> Path:
        return write_report(out, self.title, self.sections, self.summary, self.index_blocks())


def _judge_label(results: dict) -> str:
    j = results.get("judge") or {}
    llm = results["config"].get("judge_base_url")
    offline = f"{j.get('judge', 'none')} ({'usable' if j.get('usable') == 'yes' else 'not usable'} on general questions)"
    return f"LLM {llm}; offline {offline}" if llm else f"offline {offline}"


def em_headline(results: dict) -> list[dict]:
    """Calibrated EM rate per model (or why there is none), and each organism's judge-free scores."""
    rows = []
    base_rate = (results["evals"].get("base", {}).get("calibrated_em") or {}).get("corrected")
    for name, e in results["evals"].items():
        c = e.get("calibrated_em")
        if c is None:
            continue
        if "corrected" in c:
            rows.append({"measurement": f"EM rate, {name} (judge {c['judge']}, Rogan–Gladen)",
                         "value [95% CI]": str(Estimate.from_json(c["corrected"])),
                         "control": "" if name == "base" or not base_rate else f"base {Estimate.from_json(base_rate)}",
                         "note": f"raw {Estimate.from_json(c['raw'])}, n={c['raw']['n']}"})
        else:
            rows.append({"measurement": f"EM rate, {name}", "value [95% CI]": "not measured", "control": "",
                         "note": c.get("note", "")})
    for d in map(ScoreDelta.from_json, results["em_scores"]):
        if d.score.startswith(("in-domain", "general, usual")):
            rows.append({"measurement": f"judge-free EM score, {d.organism}: {d.score}",
                         "value [95% CI]": str(d.estimate), "control": "base model (Δbase, paired)",
                         "note": d.estimate.verdict()})
    return rows


def directions_headline(results: dict) -> list[dict]:
    rows = []
    for contrast, s in results["sweeps"].items():
        for b in s["best"]:
            if b["method"] in ("mean_diff", "probe"):
                rows.append({"measurement": f"direction {contrast}: {b['method']}, best layer {b['best layer']}",
                             "value [95% CI]": f"AUROC {b['AUROC [95% CI]']}",
                             "control": f"random @ layer {b.get('random @ layer', '?')}",
                             "note": f"held out, n train/test {b.get('n train/test', '?')}"})
    return rows


def _controls(rows: list[dict], key: str, digits: int = 3) -> str:
    return ", ".join(f"{r[key]:+.{digits}f}" for r in rows) or "none"


def steering_headline(results: dict) -> list[dict]:
    out = []
    r = results["steer_refusal"]["rows"]
    abl = [x for x in r if x["experiment"] == "ablate on harmful"]
    own = next((x for x in abl if x["condition"] == "refusal dir"), None)
    if own:
        rand = [x for x in abl if x["condition"].startswith("random")]
        out.append({"measurement": "refusal direction ablated (every layer): refusal log-odds Δ",
                    "value [95% CI]": format_ci(own["logodds_shift"], own["logodds_shift_lo"], own["logodds_shift_hi"]),
                    "control": f"random: {_controls(rand, 'logodds_shift')}",
                    "note": f"refusal rate {format_ci(own['refusal'], own['refusal_lo'], own['refusal_hi'])}"})
    e = results.get("steer_em")
    if e and e.get("pick"):
        p = e["pick"]
        rand = [x for x in e["rows"] if x["condition"].startswith("random") and x["layer"] == p["layer"]
                and x["ratio"] == p["ratio"]]
        out.append({"measurement": f"misalignment direction added to base (layer {p['layer']} x{p['ratio']}): EM score Δ",
                    "value [95% CI]": format_ci(p["em_shift"], p["em_shift_lo"], p["em_shift_hi"]),
                    "control": f"random: {_controls(rand, 'em_shift')}",
                    "note": f"coherence Δ {p['coherence']:+.2f}"})
    a = results["ablation"]["rows"]
    for x in a:
        if x["condition"] != "ablate own" or x.get("score") not in ("usual", "in-domain"):
            continue
        rand = [y for y in a if y["organism"] == x["organism"] and y.get("score") == x.get("score")
                and y["condition"].startswith("ablate random")]
        out.append({"measurement": f"own direction ablated from {x['organism']} ({x['score']}): EM score change",
                    "value [95% CI]": format_ci(x["change"], x["change_lo"], x["change_hi"]),
                    "control": f"random: {_controls(rand, 'change')}",
                    "note": "reduction " + (f"{x['reduction']:.0%}" if x.get("reduction") is not None
                                            else "n/a (no EM to remove)")})
    return out


def key_figure(results: dict) -> Image | None:
    """The first key figure that exists (the answer-contrast sweep, else the ablation bars)."""
    for stage, key, name, caption in KEY_FIGURES:
        r = results.get(stage) or {}
        r = r.get(key, {}) if key else r
        path = Path(r["out"]) / name if r.get("out") else None
        if path is not None and path.exists():
            return Image(path, caption)
    return None


def build_study_report(results: dict) -> StudyReport:
    sections = [overview(results), training(results), em_scores(results), trajectories(results), directions(results),
                pooling_section(results), transfer_section(results), steering_section(results),
                answers_section(results), visuals_section(results)]
    summary = (f"Emergent-misalignment study of {results['config']['model']}: organisms "
               f"{', '.join(results['organisms'])}. Every number has a 95% bootstrap CI and a control.")
    headline = em_headline(results) + directions_headline(results) + steering_headline(results)
    return StudyReport(f"emlab study: {results['config']['name']}", summary, sections, headline, key_figure(results))


def write_study_report(results: dict, out: Path, extra: Sequence[Section] = ()) -> Path:
    report = build_study_report(results)
    for section in extra:
        report.add(section)
    return report.write(out)
