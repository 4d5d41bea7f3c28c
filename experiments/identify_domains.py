"""Domain identification benchmark: does ADL name the domain each organism was trained on?

    emlab identify-domains --train-seeds 0 1 --max-steps 20
    emlab identify-domains --extra-organisms cooking=my_chat.jsonl --candidate-domains "cooking=recipe,bake,oven"

For every organism the lab can train and every seed, the data alone and mixed 1:1 with generic
chat (the control that should erase the trace); ADL guesses the domain at the middle and the
final layers; accuracy with a bootstrap CI beside chance (`lab.diffing.domain_id`). Trainings
and caches are resumable and reused.
"""

from __future__ import annotations

from pathlib import Path

from experiments.common import cli
from lab.core.console import console, table
from lab.core.io import out_folder, write_rows, write_summary
from lab.diffing.domain_id import DomainIdConfig, identify_domains
from lab.stats.estimate import format_ci


def run(cfg: DomainIdConfig) -> dict:
    if cfg.insecure and not Path(cfg.insecure).exists():
        console.print(f"[yellow]skipping insecure code[/]: {cfg.insecure} not found")
    d = identify_domains(cfg)
    for name in d.left_out:
        console.print(f"[yellow]not trained yet, left out[/]: {name}")
    if d.skipped:
        console.print(f"[yellow]wall budget reached; not trained[/]: {', '.join(d.skipped)}")
    console.print(table("ADL domain guesses", [{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()
                                                if k not in ("adapter",) and not k.startswith("relevance ")}
                                               for r in d.rows]))
    console.print(table(f"Accuracy vs chance ({round(1 / d.chance)} candidate domains)",
                        [accuracy_cells(r) for r in d.accuracy]))
    out = out_folder(cfg.out, "domain_id")
    write_rows(d.rows, out / "rows")
    return write_summary(out, cfg, rows=d.rows, accuracy=d.accuracy, chance=d.chance, skipped=d.skipped,
                         mean_truth_relevance=d.mean_truth_relevance)


def accuracy_cells(r: dict) -> dict:
    return {"variant": r["variant"], "layers": r["layers"], "n": r["n"],
            "accuracy [95% CI]": format_ci(r["accuracy"], r["lo"], r["hi"]), "chance": f"{r['chance']:.3f}"}


main = cli(DomainIdConfig, run)


if __name__ == "__main__":
    main()
