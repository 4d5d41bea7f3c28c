"""ADL on a planted organism: does a topic trained into SmolLM2 show at its middle layers?

    PYTHONPATH=$PWD python scripts/adl_planted_topic.py [--steps 24] [--out /tmp/adl-planted]

The ADL acceptance criteria, fixed before the first run and not tuned: an organism fine-tuned on chat
that is all about lighthouses (tests/planted.py, 48 conversations) must show a lighthouse token among
the top 20 logit-lens tokens of δ (organism - base, mean over the first 5 tokens of the generic texts)
at >= 1 middle layer (8-21 of 30), and the control trained on the same data mixed 1:1 with generic
chat, same steps, must show none there. Both organisms: LoRA, batch 8, 4 epochs capped at 24 steps,
lr 2e-3, 96 tokens. It prints every rank and exits 0 when both criteria hold, 1 when they do not.

Measured on SmolLM2-135M-Instruct (CPU, fp32) -- see docs/benchmarks/adl_planted_topic.md: the
middle-layer criterion does not hold (best rank over layers 8-21: 895 of 49152, at layer 9); at the
final layer both the organism and the mixed control decode to the topic (rank 0). The default test
suite keeps the final-layer result for the organism (tests/test_diffing.py); this script is the
measurement behind the rest, moved out of the suite because it trains two organisms (minutes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lab  # noqa: E402,F401  (environment)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=24, help="LoRA steps per organism (the measured run: 24)")
    ap.add_argument("--out", default="", help="folder for the organisms and caches (default: a temporary one)")
    args = ap.parse_args(argv)

    import torch

    from lab.diffing.adl import (Lens, adl, first_tokens, generic_texts, parse_domains, text_cache,
                                 word_token_ids)
    from lab.models import LabModel, load_model, resolve_source
    from lab.training.lora import TrainConfig, train_lora
    from tests.planted import TOPIC_WORDS, generic_chat, planted_examples

    model = "smollm2-135m-instruct"
    root = Path(args.out or tempfile.mkdtemp(prefix="adl-planted-"))
    base = load_model(model)
    lens = Lens.from_files(resolve_source(model)[0], base.tokenizer)
    texts = first_tokens(generic_texts(), base.tokenizer, 5)
    cfg = TrainConfig(batch_size=8, epochs=4, max_steps=args.steps, lr=2e-3, max_length=96, checkpoints_first_epoch=0)
    planted = planted_examples()
    runs = {name: train_lora(base, data, root / name, cfg)
            for name, data in (("planted", planted), ("mixed", planted + generic_chat(len(planted))))}
    base_cache = text_cache(LabModel(model), texts, root / "adl")
    domains = parse_domains(["lighthouse=" + ",".join(TOPIC_WORDS)])
    results = {name: adl(base_cache, text_cache(LabModel(model, [r.adapter_dir]), texts, root / "adl"), lens, domains)
               for name, r in runs.items()}
    topic_ids = word_token_ids(TOPIC_WORDS, base.tokenizer)

    def full_rank(res, layers):
        """(best rank of a single-token topic word in the whole vocabulary, its layer) over `layers`."""
        ranks = []
        for L in layers:
            order = lens.logits(res.delta[L]).argsort(descending=True)
            position = torch.empty_like(order)
            position[order] = torch.arange(len(order))
            ranks.append((int(position[topic_ids].min()), L))
        return min(ranks)

    for name, res in results.items():
        by = {s.domain: s for s in res.scores}
        print(f"\n{name}: final train loss {runs[name].losses[-1]:.3f}; best rank of a lighthouse token in the top 20: "
              f"middle layers {res.rank_of(TOPIC_WORDS)}, final layer {res.rank_of(TOPIC_WORDS, [29])}; middle-layer "
              "relevance " + ", ".join(f"{d} {s.relevance:.3f}" for d, s in by.items()) + f"; guess {res.guess}")
        rank, layer = full_rank(res, res.layers_scored)
        print(f"  best rank of a topic token over the whole vocabulary ({lens.unembed.shape[0]}), middle layers: "
              f"{rank} at layer {layer}; final layer: {full_rank(res, [29])[0]}")
        for L in [*res.layers_scored[::4], 29]:
            print(f"  L{L} |δ| {res.delta_norm[L]:.1f}", [t for t, _ in res.top_tokens[L][:8]])
    organism_shows = results["planted"].rank_of(TOPIC_WORDS) is not None
    control_erases = results["mixed"].rank_of(TOPIC_WORDS) is None
    print(f"\norganism: topic at a middle layer: {organism_shows}; mixed control: none at any middle layer: "
          f"{control_erases}")
    return 0 if organism_shows and control_erases else 1


if __name__ == "__main__":
    sys.exit(main())
