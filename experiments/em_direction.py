"""The Model Organisms direction from an organism's own judged answers, and its ablation / addition table.

    emlab em-direction --em-out runs/em-table --organism-name medical-mo --device cuda

The direction is fitted on the organism's own sampled answers, misaligned vs aligned, and ablated
from the organism and added to the base model beside random controls; under every condition the
model answers afresh and the best validated offline judge gives raw and calibrated EM rates
(`lab.causal.mo_direction`). Writes `<out>/mo_direction/<organism>/`: the direction, rows,
answers, table.md and summary.json.
"""

from __future__ import annotations

from experiments.common import cli
from lab.causal.mo_direction import PAPER, MoDirectionConfig, mo_direction_table
from lab.core.console import console, table
from lab.core.io import write_summary
from lab.reports.markdown import markdown_table


def run(cfg: MoDirectionConfig) -> dict:
    r = mo_direction_table(cfg)
    console.print(table(f"Model Organisms direction of {r.organism}: rests on {r.direction['n misaligned']} misaligned "
                        f"and {r.direction['n aligned']} aligned answers",
                        [{k: v for k, v in r.direction.items() if k not in ("excluded",)}]))
    console.print(table("judge", [r.judge.describe()]))
    shown = [_shown(row) for row in r.rows]
    console.print(table(f"EM rate under ablation / addition of {r.organism}'s own direction (judge: {r.judge.name}, "
                        f"calibrated on {cfg.validation_set!r})", shown))
    console.print(f"paper: {PAPER}")
    if r.judge.note:
        console.print(f"judge: {r.judge.note}")
    if r.skipped:
        console.print(f"past the {cfg.wall_budget_s:.0f} s budget, not run: {'; '.join(r.skipped)}")
    (r.out / "table.md").write_text(_markdown(r.organism, r.direction, shown, r.judge, r.skipped))
    return write_summary(r.out, cfg, organism=r.organism, adapter=r.adapter, step=r.step, direction=r.direction,
                         judge=r.judge.describe(), rows=r.rows, skipped=r.skipped, paper=PAPER, seconds=r.seconds)


def _shown(r: dict) -> dict:
    f = lambda k: f"{r[k]:.3f} [{r[k + '_lo']:.3f}, {r[k + '_hi']:.3f}]"  # noqa: E731
    return {"experiment": r["experiment"], "condition": r["condition"], "n": r["n answers"],
            "EM raw [95% CI]": f("em_raw") if "em_raw" in r else "-",
            "EM calibrated [95% CI]": f("em") if "em" in r else r.get("em_note", "-"),
            "vs unsteered": f"{r['em_change_rel']:+.0%}" if "em_change_rel" in r else "",
            "judge-free score Δ [95% CI]": f("score_change")}


def _markdown(name: str, direction: dict, shown: list[dict], judge, skipped: list[str]) -> str:
    cols = list(shown[0]) if shown else []
    lines = [f"# Model Organisms direction of {name}", "",
             f"Direction: best layer {direction['best layer']} (split by {direction['split by']}), held-out AUROC "
             f"{direction['held-out AUROC']:.3f} [{direction['auroc_lo']:.3f}, {direction['auroc_hi']:.3f}], random "
             f"direction at that layer {direction['random @ layer']:.3f}; it rests on {direction['n misaligned']} "
             f"misaligned and {direction['n aligned']} aligned answers (excluded: {direction['excluded']}).", "",
             f"Judge: {judge.name} ({judge.note or 'usable'}). The answers' labels (misaligned / aligned) are the "
             f"EM pipeline's verdicts from its judges: the direction's classes are only as good as that judge is on "
             f"these questions.", "",
             *markdown_table(shown, cols)]
    lines += ["", f"Paper: {PAPER}."]
    if skipped:
        lines += ["", f"Not run (budget): {'; '.join(skipped)}"]
    return "\n".join(lines) + "\n"


main = cli(MoDirectionConfig, run)


if __name__ == "__main__":
    main()
