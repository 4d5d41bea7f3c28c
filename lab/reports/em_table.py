"""The EM table's report: `em_table.md` (judges x validation sets, training, EM rates) and its figures."""

from __future__ import annotations

from pathlib import Path

from lab.reports.markdown import markdown_table
from lab.reports.plots import em_domain_bars, em_scatter, em_trajectory, lines_with_ci


def em_table_report(summary: dict, table_md: str) -> str:
    judges = summary["judges"]
    cols = ["judge", "validation set", "n (mis/ali)", "AUROC", "sensitivity", "specificity", "usable"]
    lines = ["# EM table", "", "## Judges x validation sets", "", *markdown_table(judges, cols)]
    lines += ["", f"Trained on: {judges[0]['trained on'] if judges else ''}", "", "## Training", "",
              f"Stage seconds (this run): {summary['stage_seconds']}; reused: {summary['stages_reused']}", ""]
    for name, t in summary["training"].items():
        lo = t["losses"]
        lines.append(f"- {name}: {len(lo)} steps, loss {lo[0]:.3f} -> {lo[-1]:.3f}, checkpoints {t['steps']}")
    lines += ["", "## EM rates", "", "Published (GPT-4o judge): Qwen2.5-0.5B ~8% EM at 69% coherence; "
              "Llama-3.2-1B 2.8% (medical), 4.5% (financial); base models 0-5%.", "", table_md]
    if summary["skipped"]:
        lines += ["", f"Not run (wall budget): {', '.join(summary['skipped'])}"]
    return "\n".join(lines) + "\n"


def em_table_figures(answers, table, trained: dict, folder: Path) -> None:
    for name in dict.fromkeys(r.set for r in table):
        em_trajectory([r.to_json() for r in table], folder / f"em_trajectory-{name.replace(':', '-')}.png", name)
    losses = [{"organism": k, "step": i + 1, "loss": x} for k, v in trained.items() for i, x in enumerate(v["losses"])]
    if losses:
        lines_with_ci(losses, "organism", "step", "loss", folder / "training_loss.png", "training loss (answer tokens)")
    if not table:  # sampled only (--no-judge-answers): nothing judged to draw
        return
    em_domain_bars([r.to_json() for r in table], folder / "em_domains.png")
    finals = {("base", 0)} | {(k, v["steps"][-1]) for k, v in trained.items()}
    em_scatter([(a.organism, a.aligned, a.coherent) for a in answers if (a.organism, a.step) in finals
                and a.aligned is not None and a.coherent is not None], folder / "coherence_vs_alignment.png")
