"""The study report's model-diffing section, from `emlab diff` / `experiments.domain_id` /
`experiments.preventative` / `experiments.monitor` / `experiments.dynamics` summaries (their
summary.json dicts). The study adds it with `--diffing OUT_DIR` (`report.add(diffing_section_from(out_dir))`
on a `lab.reports.study.StudyReport`), or `diffing_section(...)` with the dicts.

    python -m lab.reports.diffing OUT_DIR      # OUT_DIR/diffing.md and OUT_DIR/report/ (HTML) from OUT_DIR's summaries
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lab.reports import Answers, Image, Section, Table, Text
from lab.stats.estimate import format_ci


def diffing_section_from(out_dir: str | Path) -> Section:
    """The section from whatever summaries the diffing experiments left under `out_dir`
    (`diff/*/`, `domain_id/`, `preventative/*/`, `monitor/`, `dynamics/*/`)."""
    out = Path(out_dir)
    load = lambda p: json.loads(p.read_text())  # noqa: E731
    first = lambda pattern: next((load(p) for p in sorted(out.glob(pattern))), None)  # noqa: E731
    diffs = {p.parent.name: load(p) for p in sorted(out.glob("diff/*/summary.json"))}
    dynamics = {p.parent.name: load(p) for p in sorted(out.glob("dynamics/*/summary.json"))}
    return diffing_section(diffs, first("domain_id/summary.json"), first("preventative/*/summary.json"),
                           first("monitor/summary.json"), dynamics)


def diffing_section(diffs: dict[str, dict], domain_id: dict | None = None, preventative: dict | None = None,
                    monitor: dict | None = None, dynamics: dict[str, dict] | None = None) -> Section:
    """`diffs`: organism name -> `experiments.diff` summary; the others optional (`dynamics`: domain -> summary)."""
    blocks: list = [Text(
        "Activation Difference Lens (Minder et al. 2025): the mean residual difference organism − base over the first "
        "k tokens of generic text, per layer, read through the base model's logit lens, and scored against candidate "
        "domains' vocabularies (relevance = share of the top tokens that are domain words). The base model is then "
        "steered with δ at half depth beside a random direction of the same norm (coherence = neutral-text log-prob "
        "change per token).")]
    for name, s in diffs.items():
        blocks.append(Text(f"{name}: ADL's guess: {s['guess']} (layers scored: {s['layers_scored']})."))
        blocks.append(Table(f"{name}: top tokens of δ per layer", [
            {"layer": L, "|δ|": round(s["delta_norm"][L], 2), "top tokens": " ".join(repr(t) for t, _ in toks[:10])}
            for L, toks in s["top_tokens"].items()]))
        blocks.append(Table(f"{name}: domain scores", [
            {"domain": d["domain"], "relevance": d["relevance"], "logit z": d["logit_z"], "hits": " ".join(d["hits"][:8])}
            for d in s["scores"]]))
        steering = s.get("steering") or []
        if steering:
            blocks.append(Table(f"{name}: steering the base model with δ (layer {s['steer_layer']})", [
                {"condition": r["condition"], "ratio": r["ratio"],
                 "coherence Δ [95% CI]": format_ci(r["coherence"], r["coherence_lo"], r["coherence_hi"], 2),
                 **{f"{k} words": v for k, v in r["domain_share"].items()}} for r in steering]))
            shown = [r for r in steering if r["condition"] == "unsteered" or r["ratio"] == s.get("picked_ratio")]
            blocks.append(Answers(f"{name}: answers (greedy)", [
                {"question": a["question"], **{f"{r['condition']} x{r['ratio']}": r["answers"][i]["answer"] for r in shown}}
                for i, a in enumerate(shown[0]["answers"])], ["question", *[f"{r['condition']} x{r['ratio']}" for r in shown]]))
    if domain_id:
        order = ["organism", "seed", "variant", "truth", "guess (middle)", "guess (final)", "truth relevance (middle)",
                 "truth relevance (final)", "hits (middle)", "hits (final)"]
        rows = sorted(domain_id["rows"], key=lambda r: (r["organism"], r["seed"], r["variant"]))
        blocks.append(Table("Domain identification: ADL's guess vs the truth (organisms x seeds x alone / mixed 1:1)",
                            [{k: r.get(k, "") for k in order} for r in rows], order))
        if domain_id.get("skipped"):
            blocks.append(Text(f"Not trained (wall budget): {', '.join(domain_id['skipped'])}."))
        blocks.append(Table(f"Accuracy vs chance ({domain_id['chance']:.3f})", [
            {"variant": r["variant"], "layers": r["layers"], "n": r["n"],
             "accuracy [95% CI]": format_ci(r["accuracy"], r["lo"], r["hi"]), "chance": f"{domain_id['chance']:.3f}"}
            for r in domain_id["accuracy"]]))
    if preventative:
        blocks.append(Table("Preventative steering: misalignment direction added during training only", [
            {"organism": r["organism"], "score": r["score"], "value [95% CI]": format_ci(r["value"], r["lo"], r["hi"]),
             "n": r["n"]} for r in preventative["rows"]]))
    if monitor:
        blocks += monitor_blocks(monitor)
    for domain, d in (dynamics or {}).items():
        blocks += dynamics_blocks(domain, d)
    return Section("diffing", "Model diffing and preventative steering", blocks)


def monitor_blocks(m: dict) -> list:
    names = list(m["monitors"])
    blocks: list = [Text(
        "Monitoring (Chen et al. 2025): EM, refusal and code-mode directions fitted on the base model (difference of "
        "means, best held-out layer at or past half depth); per checkpoint, the mean paired shift (model − base) of "
        "held-out examples along each, beside a random direction of the same layer, and the judge-free EM score "
        "(Δbase, general questions)."),
        Table("Directions", [{"direction": n, **v} for n, v in m["monitors"].items()]),
        Table("Per model: shift [95% CI] (random direction) and EM Δbase", [
            {"run": r["run"], "step": r["step"],
             **{n: f"{format_ci(r[f'shift {n}'], r[f'shift {n} lo'], r[f'shift {n} hi'], 2)} ({r[f'random {n}']:+.2f})"
                for n in names},
             "EM usual Δbase": format_ci(r["EM usual"], r["EM usual lo"], r["EM usual hi"]),
             "EM terse Δbase": format_ci(r["EM terse"], r["EM terse lo"], r["EM terse hi"])} for r in m["rows"]]),
        Table("Across checkpoints and organisms: Pearson r [95% CI, bootstrap over models]", [
            {"x": c["x"], "y": c["y"], "r [95% CI]": format_ci(c["r"], c["lo"], c["hi"]), "n models": c["n models"]}
            for c in m["correlations"]]),
        Table("Per question: last-prompt-token projection on EM vs the answer's EM score", [
            {"questions": k, "pooled r [95% CI, bootstrap over questions]": format_ci(v["r"]["value"], v["r"]["lo"], v["r"]["hi"]),
             "mean within-model r": v["within_model_mean_r"], "pairs": v["n_pairs"], "models": v["n_models"]}
            for k, v in m["per_question"].items()])]
    if m.get("skipped"):
        blocks.append(Text(f"Not measured (wall budget): {', '.join(m['skipped'])}."))
    blocks += [Image(f) for f in m.get("figures", []) if Path(f).exists()]
    return blocks


def dynamics_blocks(domain: str, d: dict) -> list:
    blocks: list = []
    for recipe, r in d["runs"].items():
        ks = [k for k in r["transition"]]
        tr = "; ".join(f"k = {k}: step {t[0]} (cos {t[1]:.3f})" for k, t in r["transition"].items() if t)
        blocks.append(Text(f"{domain} {recipe} (rank-1 adapters at layers {r['layers']}): lowest local cosine "
                           f"(against checkpoints from step {r.get('settled_from', 0)} on) {tr}; "
                           f"EM (usual) first above 0 at step {r['em_rise_step']}; PCA explained "
                           f"{', '.join(f'{x:.2f}' for x in r['pca_explained'])}."))
        blocks.append(Table(f"{domain} {recipe}: adapter dynamics vs EM", [
            {"step": x["step"], "|B·A|": x["norm"], **{f"cos k={k}": x.get(f"cos k={k}") for k in ks},
             "PC1": x["pc1"], "PC2": x["pc2"],
             "EM usual Δbase": format_ci(x["EM usual"], x["EM usual lo"], x["EM usual hi"]) if "EM usual" in x else "",
             "EM in-domain Δbase": format_ci(x["EM in-domain"], x["EM in-domain lo"], x["EM in-domain hi"])
             if "EM in-domain" in x else ""}
            for x in r["rows"]]))
        if r["probes"]:
            blocks.append(Table(f"{domain} {recipe}: L1 probes on per-token adapter scalars (held out by question)", [
                {"task": p["task"], "features": p["features"],
                 "AUROC [95% CI]": format_ci(p["auroc"], p["auroc_lo"], p["auroc_hi"]),
                 "carriers (layer, by |w|)": " ".join(map(str, p["carriers"])) or "none",
                 "weights": " ".join(f"L{L}:{w:+.2f}" for L, w in zip(p["layers"], p["coef"])),
                 "tokens train/test": f"{p['n_train_tokens']}/{p['n_test_tokens']}"} for p in r["probes"]]))
        if Path(r["figure"]).exists():
            blocks.append(Image(r["figure"], f"{domain} {recipe}"))
    if d.get("skipped"):
        blocks.append(Text(f"Not done (wall budget): {', '.join(d['skipped'])}."))
    return blocks


def markdown(section: Section) -> str:
    """The section as Markdown (text, tables, image links): the device run's readable summary."""
    lines = [f"## {section.title}", ""]
    for b in section.blocks:
        if isinstance(b, Text):
            lines += [b.text, ""]
        elif isinstance(b, (Table, Answers)):
            cols = list(b.columns or dict.fromkeys(k for r in b.rows for k in r))
            cell = lambda v: (f"{v:.4g}" if isinstance(v, float) else str(v)).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            lines += [f"**{b.title}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in b.rows] + [""]
        elif isinstance(b, Image):
            lines += [f"![{b.caption}]({b.path})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from lab.reports import write_report

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        raise SystemExit("usage: python -m lab.reports.diffing OUT_DIR (a folder holding the experiments' summaries)")
    out = Path(args[0])
    section = diffing_section_from(out)
    (out / "diffing.md").write_text(markdown(section), encoding="utf-8")
    write_report(out / "report", "emlab model diffing", [section], "Model diffing, monitoring and training dynamics.")
    print(f"wrote {out / 'diffing.md'} and {out / 'report' / 'index.html'}")


if __name__ == "__main__":
    main()
