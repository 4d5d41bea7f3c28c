"""Which domain was this organism trained on? The Activation Difference Lens (Minder et al. 2025).

    emlab diff-adapter --adapter runs/medical/adapter
    emlab diff-adapter --adapter DIR --candidate-domains "cooking=recipe,bake,oven" --texts my_texts.txt

Mean residual difference (organism − base) over the first k tokens of generic text, per
layer, read through the base model's logit lens; each candidate domain scored by how many
of the top tokens over the middle layers are its words; then the base model steered with δ
at half depth, beside a random direction of the same norm (`lab.diffing.adapter_diff`).
Activations and steering results are cached: a rerun loads no model.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from experiments.common import cli
from lab.core.console import console, table
from lab.core.io import out_folder, write_summary
from lab.diffing.adapter_diff import DiffConfig, diff_adapter, organism_adapters, picked
from lab.stats.estimate import format_ci


def run(cfg: DiffConfig) -> dict:
    adapters = organism_adapters(cfg)
    result, rows, layer = diff_adapter(cfg, adapters)
    console.print(table(f"ADL: logit-lens top tokens of δ = organism − base (first {result.k} tokens of "
                        f"{result.n_texts} generic texts; * = middle layers scored)",
                        [{"layer": f"{L}{'*' if L in result.layers_scored else ''}", "|δ|": f"{result.delta_norm[L]:.2f}",
                          "top tokens": " ".join(repr(t) for t, _ in toks[: cfg.top_tokens])}
                         for L, toks in result.top_tokens.items()]))
    pick = picked(rows, cfg.coherence_floor)
    random_at = next((r for r in rows if r.condition == "random" and pick and r.ratio == pick.ratio), None)
    unsteered = next((r for r in rows if r.condition == "unsteered"), None)
    domain_rows = []
    for s in sorted(result.scores, key=lambda s: -s.relevance):
        row = {"domain": s.domain, "relevance": f"{s.relevance:.3f}", "logit z": f"{s.logit_z:+.2f}",
               "matching top tokens": " ".join(repr(h) for h in s.hits[:8])}
        if pick:
            row[f"steered answers x{pick.ratio} (unsteered / random)"] = (
                f"{pick.domain_share[s.domain]:.3f} ({unsteered.domain_share[s.domain]:.3f} / "
                f"{random_at.domain_share[s.domain]:.3f})")
        domain_rows.append(row)
    console.print(table(f"Domain scores (relevance: share of top tokens over the scored layers ({cfg.layers}) that are "
                        "domain words)",
                        domain_rows))
    console.print(f"[bold]which domain was this organism trained on?[/] -> [green]{result.guess}[/]")
    if rows:
        console.print(table(f"steering the base model with δ at layer {layer} (coherence floor {cfg.coherence_floor})",
                            [{"condition": r.condition, "ratio": r.ratio,
                              "coherence Δ [95% CI]": format_ci(r.coherence, r.coherence_lo, r.coherence_hi, 2),
                              **{f"{d} words": f"{v:.3f}" for d, v in r.domain_share.items()}} for r in rows]))
        shown = [r for r in (unsteered, pick, random_at) if r is not None]
        console.print(table("answers (greedy)", [{"question": a["question"],
                                                   **{f"{r.condition} x{r.ratio}": r.answers[i]["answer"] for r in shown}}
                                                  for i, a in enumerate(shown[0].answers)]))
    out = out_folder(cfg.out, f"diff/{Path(adapters[-1]).parent.name}-{Path(adapters[-1]).name}")
    return write_summary(out, cfg, guess=result.guess, k=result.k, n_texts=result.n_texts,
                        layers_scored=result.layers_scored, steer_layer=layer,
                        top_tokens={str(L): t for L, t in result.top_tokens.items()},
                        delta_norm={str(L): v for L, v in result.delta_norm.items()},
                        scores=[asdict(s) for s in result.scores], steering=[asdict(r) for r in rows],
                        picked_ratio=pick.ratio if pick else None)


main = cli(DiffConfig, run)


if __name__ == "__main__":
    main()
