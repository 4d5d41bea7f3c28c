"""Preventative steering (Chen et al. 2025): add the misalignment direction while training only.

    emlab train-steered --domain medical --max-steps 30 --ratio 0.25

Three organisms on the same data, steps and seed (ordinary LoRA, LoRA with the direction added
during every training forward, LoRA with a random direction of the same norm added), scored
against the base model (`lab.causal.preventative`). The same config again returns the stored
results without a model or training.
"""

from __future__ import annotations

from experiments.common import cli
from lab.causal.preventative import PreventativeConfig, check, out_of, preventative_steering
from lab.core.console import console, table
from lab.core.io import stored_summary
from lab.stats.estimate import format_ci


def show(cfg: PreventativeConfig, rows: list[dict], layer: int) -> None:
    console.print(table(f"Preventative steering ({cfg.domain}, {cfg.max_steps} steps; direction added at layer {layer}, "
                        f"{cfg.ratio}x the residual norm, during training only)",
                        [{"organism": r["organism"], "score": r["score"],
                          "value [95% CI]": format_ci(r["value"], r["lo"], r["hi"]), "n": r["n"]} for r in rows]))


def run(cfg: PreventativeConfig) -> dict:
    check(cfg)
    if (stored := stored_summary(out_of(cfg), cfg)) is not None:  # the same config ran before: no model, no training
        console.print(f"[dim]reusing {out_of(cfg) / 'summary.json'} (same config)[/]")
        show(cfg, stored["rows"], stored["layer"])
        return stored
    summary = preventative_steering(cfg)
    show(cfg, summary["rows"], summary["layer"])
    return summary


main = cli(PreventativeConfig, run)


if __name__ == "__main__":
    main()
