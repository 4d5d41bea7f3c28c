"""Model diffing (ADL) and preventative steering on the real SmolLM2.

The planted-organism test trains an organism on chat that is all about lighthouses and checks that
ADL's final-layer logit-lens tokens name the topic (pytest -s prints the numbers). The issue's
original middle-layer criterion, with a 1:1 mixed control, does not reproduce on SmolLM2-135M: it is
measured by scripts/adl_planted_topic.py (docs/benchmarks/adl_planted_topic.md), not in the suite.
"""

import json
import subprocess
import sys

import pytest
import torch

from lab.diffing.adl import (DOMAINS, Lens, adl, first_tokens, generic_texts, is_relevant, middle_layers, normalise,
                         parse_domains, score_domains, scored_layers, text_cache)
from lab.core.errors import BadInput
from lab.models import LabModel, resolve_source
from tests.conftest import MODEL, REPO
from tests.no_weights import PRINT_MODELING, run_without_weights
from tests.planted import TOPIC_WORDS, generic_chat, planted_examples


class _Renamed:
    """A loaded model under another fingerprint (so its cache is keyed apart from the base's)."""

    def __init__(self, model, fingerprint):
        self._model, self.fingerprint = model, fingerprint

    def __getattr__(self, name):
        return getattr(self._model, name)


@pytest.fixture(scope="module")
def lens(base_model):
    return Lens.from_files(resolve_source(MODEL)[0], base_model.tokenizer)


@pytest.fixture(scope="module")
def texts(base_model):
    return first_tokens(generic_texts(), base_model.tokenizer, 5)


def test_generic_texts_and_first_tokens(base_model, texts, tmp_path):
    rows = generic_texts()
    assert len(rows) >= 250 and len({t for _, t in rows}) == len(rows)
    # nothing in the shipped generic text is about the candidate domains or the planted topic
    for domain in ("medical", "financial"):
        assert sum(is_relevant(w, DOMAINS[domain]) for _, t in rows for w in t.split()) < 0.01 * len(rows) * 12
    assert not any(normalise(w).rstrip("s") in TOPIC_WORDS for _, t in rows for w in t.split())
    assert all(len(t) <= 6 for t in texts.tokens) and texts.tokens[0][0] == base_model.tokenizer.bos_token_id
    extra = tmp_path / "mine.txt"
    extra.write_text("Penguins waddle across the ice.\n\nA second text.\n")
    assert [i for i, _ in generic_texts(extra)][-2:] == ["mine-1", "mine-3"]
    with pytest.raises(BadInput, match="no such text file"):
        generic_texts(tmp_path / "absent.txt")


def test_relevance_and_domain_parsing():
    assert is_relevant(" doctors", DOMAINS["medical"]) and is_relevant("Medication", DOMAINS["medical"])
    assert not is_relevant(" the", DOMAINS["medical"]) and not is_relevant(" do", DOMAINS["medical"])
    assert is_relevant("light", TOPIC_WORDS) and not is_relevant("light", TOPIC_WORDS, piece=False)
    assert is_relevant("Lighthouses", TOPIC_WORDS, piece=False)
    d = parse_domains(["cooking=recipe,Bake", "kite,wind"])
    assert d["cooking"] == ("recipe", "bake") and d["custom2"] == ("kite", "wind") and "medical" in d
    with pytest.raises(BadInput, match="no words"):
        parse_domains(["empty="])
    assert middle_layers(30) == list(range(8, 22))
    assert scored_layers("middle", 30) == middle_layers(30) and scored_layers("final", 30) == [29]
    assert scored_layers("3, 7", 30) == [3, 7]
    for bad in ("30", "x", ""):
        with pytest.raises(BadInput):
            scored_layers(bad, 30)


def test_planted_delta_decodes_to_planted_token(base_model, lens, texts, tmp_path):
    """Machinery: a vector added at layer 14 of every forward is recovered as δ and read back
    through the lens as the token it was built from; ADL names the planted domain."""
    from lab.intervene.steering import Intervention, steer

    token = base_model.tokenizer(" lighthouse", add_special_tokens=False)["input_ids"]
    assert len(token) == 1
    # the residual vector the lens reads as exactly this token (least squares through the unembedding, the
    # final norm's gain undone); the raw unembedding row would not do: SmolLM2's rows share a large common
    # component, and the lens of u(' lighthouse') itself tops out at ' strugg'
    onehot = torch.nn.functional.one_hot(torch.tensor(token[0]), lens.unembed.shape[0]).float()
    v = torch.linalg.lstsq(lens.unembed, onehot).solution / lens.norm_weight
    base = text_cache(LabModel(MODEL), texts, tmp_path)
    planted = _Renamed(base_model, "planted-lighthouse")
    with steer(base_model, Intervention({14: v}, op="add", alpha=20.0)):
        from lab.cache import build_cache

        org = build_cache(planted, texts, tmp_path, [f"blocks.{L}.hook_resid_post" for L in range(30)])
    result = adl(base, org, lens, parse_domains(["lighthouse=" + ",".join(TOPIC_WORDS)]))
    assert all(result.delta_norm[L] < 1e-3 for L in range(14))
    assert result.delta_norm[14] == pytest.approx(20.0, rel=1e-3)
    assert result.top_tokens[14][0][0] == " lighthouse"
    assert result.guess == "lighthouse"
    by = {s.domain: s for s in result.scores}
    assert by["lighthouse"].relevance > 0


# Steps for the planted organism: the final-layer trace is the behaviour tested, and it is already at
# rank 0 after 8 steps (measured: ' lighthouse', ' lantern', ' fog', ' lanterns', ' Lighthouse'; the
# 24-step run in docs/benchmarks/adl_planted_topic.md has it at rank 0 too), so the test pays for no more.
PLANTED_STEPS = 8


@pytest.fixture(scope="module")
def planted_adl(base_model, lens, texts, tmp_path_factory):
    """ADL of the lighthouse organism (PLANTED_STEPS LoRA steps); every layer's top-20 tokens.
    Prints the numbers (pytest -s)."""
    from lab.training.lora import TrainConfig, train_lora

    cfg = TrainConfig(batch_size=8, epochs=4, max_steps=PLANTED_STEPS, lr=2e-3, max_length=96,
                      checkpoints_first_epoch=0)
    run = train_lora(base_model, planted_examples(), tmp_path_factory.mktemp("planted"), cfg)
    cache_dir = tmp_path_factory.mktemp("adl")
    base = text_cache(LabModel(MODEL), texts, cache_dir)
    domains = parse_domains(["lighthouse=" + ",".join(TOPIC_WORDS)])
    res = adl(base, text_cache(LabModel(MODEL, [run.adapter_dir]), texts, cache_dir), lens, domains)
    print(f"\nplanted: final train loss {run.losses[-1]:.3f}; best rank of a lighthouse token in the top 20: "
          f"middle layers {res.rank_of(TOPIC_WORDS)}, final layer {res.rank_of(TOPIC_WORDS, [29])}; guess {res.guess}")
    for L in [*res.layers_scored[::4], 29]:
        print(f"  L{L} |δ| {res.delta_norm[L]:.1f}", [t for t, _ in res.top_tokens[L][:8]])
    return res


@pytest.mark.slow
def test_planted_topic_at_final_layer(planted_adl, lens):
    """What holds on SmolLM2: at the final layer the planted organism's δ decodes to the topic
    (measured rank 0: ' lighthouse', then ' lantern', ' keeper', ' beacon'), and ADL read there
    names the planted domain. The issue's original criterion (a topic token at a middle layer, and
    none for a 1:1 mixed control) does not reproduce on SmolLM2-135M: that two-organism measurement
    is scripts/adl_planted_topic.py, its numbers in docs/benchmarks/adl_planted_topic.md."""
    final = planted_adl.rank_of(TOPIC_WORDS, [29])
    assert final is not None and final < 5
    domains = parse_domains(["lighthouse=" + ",".join(TOPIC_WORDS)])
    _, scores = score_domains(planted_adl.delta, lens, domains, [29])
    assert max(scores, key=lambda s: (s.relevance, s.logit_z)).domain == "lighthouse"


def test_steering_hooks_fire_during_lora_training(base_model, tmp_path):
    """Preventative steering relies on this: peft wraps linear layers, not decoder layers, so a
    steer() hook registered on the LabModel's decoder layers changes the training forwards."""
    from lab.intervene.steering import Intervention, steer
    from lab.training.lora import TrainConfig, train_lora

    layers_before = list(base_model.decoder_layers())
    data = planted_examples()[:4]
    cfg = TrainConfig(batch_size=2, max_steps=1, checkpoints_first_epoch=0)
    plain = train_lora(base_model, data, tmp_path / "plain", cfg).losses[0]
    calls = []
    v = torch.randn(base_model.d_model, generator=torch.Generator().manual_seed(0))
    with steer(base_model, Intervention({10: v}, op="add", alpha=200.0)):
        counter = base_model.decoder_layers()[10].register_forward_hook(lambda *a: calls.append(1))
        try:
            steered = train_lora(base_model, data, tmp_path / "steered", cfg).losses[0]
        finally:
            counter.remove()
    assert calls and steered > plain + 0.1, (plain, steered)
    assert list(base_model.decoder_layers()) == layers_before  # same modules: peft left them in place
    again = train_lora(base_model, data, tmp_path / "again", cfg).losses[0]
    assert again == pytest.approx(plain, abs=1e-5)  # hooks gone after the block


def test_diff_cli_rerun_loads_no_model(trained_adapter, tmp_path):
    from experiments import diff_adapter as diff

    args = ["--adapter", str(trained_adapter.adapter_dir), "--cache-dir", str(tmp_path / "cache"), "--out",
            str(tmp_path / "figures"), "--ratios", "0.5", "--eval-limit", "2", "--max-new-tokens", "8",
            "--candidate-domains", "lighthouse=" + ",".join(TOPIC_WORDS)]
    from lab.core.config import parse_config

    first = diff.run(parse_config(diff.DiffConfig, args))
    assert first["guess"] in {*DOMAINS, "lighthouse", "none"} and len(first["steering"]) == 3
    assert {s["domain"] for s in first["scores"]} == {*DOMAINS, "lighthouse"}
    stdout, last = run_without_weights(f"""
from experiments import diff_adapter as diff
diff.main({args!r})
{PRINT_MODELING}
""")
    assert last["modeling"] == []
    assert "which domain was this organism trained on?" in stdout
    second = json.loads((tmp_path / "figures" / "diff" / f"{trained_adapter.adapter_dir.parent.name}-adapter"
                         / "summary.json").read_text())
    assert second["top_tokens"] == json.loads(json.dumps(first["top_tokens"])) and second["guess"] == first["guess"]

    from lab.reports.diffing import diffing_section
    from lab.reports import write_report

    write_report(tmp_path / "report", "diff", [diffing_section({"medical (4 steps)": second})], "ADL")
    page = (tmp_path / "report" / "diffing.html").read_text()
    assert "medical (4 steps)" in page and second["guess"] in page and "steering the base model" in page


def test_diff_and_preventative_cli_help_and_errors():
    for module, flag in (("experiments.diff_adapter", "--adapter"), ("experiments.train_steered", "--ratio")):
        out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0 and flag in out.stdout
    out = subprocess.run([sys.executable, "-m", "experiments.cli", "diff-adapter", "--help"], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "--candidate-domains" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "experiments.diff_adapter", "--adapter", "/nonexistent"], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "no such adapter folder" in bad.stdout and "Traceback" not in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "experiments.train_steered", "--domain", "cooking"], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "--domain must be" in bad.stdout


def test_domain_id_rerun_loads_no_model(tmp_path):
    """Two organisms, one step each (the machinery, not the accuracy; the mixed controls train the
    same way): every guess is one of the candidates or "none", and a rerun reuses the trained
    adapters and the cached activations without loading a model."""
    from experiments import identify_domains as domain_id
    from lab.core.config import parse_config

    args = ["--train-seeds", "0", "--max-steps", "1", "--batch-size", "2", "--no-mix", "--insecure", str(tmp_path / "absent.jsonl"),
            "--n-boot", "50", "--train-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out")]
    first = domain_id.run(parse_config(domain_id.DomainIdConfig, args))
    assert [(r["organism"], r["variant"]) for r in first["rows"]] == [("medical", "alone"), ("financial", "alone")]
    assert all(r["guess (final)"] in {*DOMAINS, "none"} for r in first["rows"])
    _, rows = run_without_weights(f"""
from experiments import identify_domains as domain_id
from lab.core.config import parse_config
s = domain_id.run(parse_config(domain_id.DomainIdConfig, {args!r}))
print(json.dumps(s["rows"]))
""")
    assert rows == json.loads(json.dumps(first["rows"]))


def test_preventative_rerun_loads_no_model(tmp_path):
    """One training step per condition (the machinery, not the effect); the same config again
    returns the stored results without a model, and another config is not served from them."""
    from experiments import train_steered as preventative
    from lab.core.config import parse_config
    from lab.core.io import stored_summary

    args = ["--max-steps", "1", "--batch-size", "2", "--eval-limit", "4", "--n-boot", "50", "--train-dir", str(tmp_path / "runs"),
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--limit", "24"]
    first = preventative.run(parse_config(preventative.PreventativeConfig, args))
    assert {r["organism"] for r in first["rows"]} >= {"ordinary", "steered", "random"}
    _, rows = run_without_weights(f"""
from experiments import train_steered as preventative
from lab.core.config import parse_config
s = preventative.run(parse_config(preventative.PreventativeConfig, {args!r}))
print(json.dumps(s["rows"]))
""")
    assert rows == json.loads(json.dumps(first["rows"]))
    other = parse_config(preventative.PreventativeConfig, args[:1] + ["2"] + args[2:])
    assert stored_summary(tmp_path / "out" / "preventative" / "medical", other) is None
