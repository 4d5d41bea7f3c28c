"""The study report's model-diffing section, from `emlab diff` / `experiments.domain_id` /
`experiments.preventative` summaries (their summary.json dicts). Hook it into
experiments/study_report.py with one line: `sections.append(diffing_section(...))`."""

from __future__ import annotations

from lab.console import fmt_ci
from lab.reports import Answers, Section, Table, Text


def diffing_section(diffs: dict[str, dict], domain_id: dict | None = None, preventative: dict | None = None) -> Section:
    """`diffs`: organism name -> `experiments.diff` summary; the others optional."""
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
                 "coherence Δ [95% CI]": fmt_ci(r["coherence"], r["coherence_lo"], r["coherence_hi"], 2),
                 **{f"{k} words": v for k, v in r["domain_share"].items()}} for r in steering]))
            shown = [r for r in steering if r["condition"] == "unsteered" or r["ratio"] == s.get("picked_ratio")]
            blocks.append(Answers(f"{name}: answers (greedy)", [
                {"question": a["question"], **{f"{r['condition']} x{r['ratio']}": r["answers"][i]["answer"] for r in shown}}
                for i, a in enumerate(shown[0]["answers"])], ["question", *[f"{r['condition']} x{r['ratio']}" for r in shown]]))
    if domain_id:
        blocks.append(Table("Domain identification: ADL's guess vs the truth", [
            {k: v for k, v in r.items() if k != "adapter"} for r in domain_id["rows"]]))
        blocks.append(Table(f"Accuracy vs chance ({domain_id['chance']:.3f})", [
            {k: v for k, v in r.items() if k not in ("accuracy", "lo", "hi")} for r in domain_id["accuracy"]]))
    if preventative:
        blocks.append(Table("Preventative steering: misalignment direction added during training only", [
            {"organism": r["organism"], "score": r["score"], "value [95% CI]": fmt_ci(r["value"], r["lo"], r["hi"]),
             "n": r["n"]} for r in preventative["rows"]]))
    return Section("diffing", "Model diffing and preventative steering", blocks)
