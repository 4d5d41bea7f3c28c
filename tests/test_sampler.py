"""Batch-invariant seeded sampling and the continuous-batching sampler (real SmolLM2, fp32, CPU)."""

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import lab.intervene.decode
import lab.intervene.row_choice
import lab.intervene.sampler
from lab.intervene import sampling_noise as noise
from lab.data import ChatExample, load_contrast
from lab.intervene.decode import Sampling, hf_generate
from lab.core.errors import BadInput
from lab.intervene.generate import AnswerRun, GenerationConfig, generate_answers
from lab.intervene.steering import Intervention
from tests.conftest import MODEL, REPO, intervention_conditions

CONDITIONS = ("none", "add", "ablate", "ablate_prompt", "add_generated")  # see intervention_conditions


# --------------------------------------------------------------------------- the noise


def _reference_bits(seed: int, step: int, token: int) -> int:
    """The hash in Python integers (exact, unbounded): what the int64 torch ops must compute."""
    def mix(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & noise.M32
        x ^= x >> 15
        x = (x * 0x846CA68B) & noise.M32
        return x ^ (x >> 16)
    key = mix((mix(seed & noise.M32) + (step + 1) * 0x9E3779B9) & noise.M32)
    return mix((key + (token + 1) * 0x85EBCA6B) & noise.M32)


def test_noise_bits_are_exact_integer_arithmetic():
    """The torch hash equals the same hash in unbounded Python integers, extremes included: no int64
    product overflows, so the bits cannot depend on a device or a compiler."""
    seeds = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 123456789]
    steps = [0, 1, 599, 2**31, 2**32 - 2]
    tokens = [0, 1, 2, 49151, 152063]
    for seed in seeds:
        for step in steps:
            got = noise.uniform_bits(torch.tensor([seed]), torch.tensor([step]), 152064)[0, tokens].tolist()
            assert got == [_reference_bits(seed, step, t) for t in tokens], (seed, step)


def test_gumbel_table_is_the_pinned_table():
    """The table every device copies: if another machine builds another one, this says so."""
    table = noise.gumbel_table()
    assert table.shape == (2**noise.TABLE_BITS,) and table.dtype == torch.float32
    assert torch.all(table[1:] > table[:-1])  # increasing in the uniform: G(u) is monotone
    assert noise.table_checksum() == "d579488fe28e6abc92b072bbe361e480004bff809db3200259948c2756ebe0d7"


def test_a_rows_noise_does_not_depend_on_its_batch():
    """Row (seed, step) gets the same noise alone, among 15 other rows, in another order, at another step mix."""
    gen = torch.Generator().manual_seed(0)
    seeds = torch.randint(0, 2**32, (16,), generator=gen)
    steps = torch.randint(0, 600, (16,), generator=gen)
    vocab = 49152
    batch = noise.gumbel(seeds, steps, vocab)
    perm = torch.randperm(16, generator=gen)
    shuffled = noise.gumbel(seeds[perm], steps[perm], vocab)
    for r in range(16):
        alone = noise.gumbel(seeds[r: r + 1], steps[r: r + 1], vocab)[0]
        assert torch.equal(alone, batch[r]) and torch.equal(alone, shuffled[(perm == r).nonzero()[0, 0]])
    assert not torch.equal(batch[0], noise.gumbel(seeds[:1], steps[:1] + 1, vocab)[0])  # the next step differs
    assert not torch.equal(batch[0], noise.gumbel(seeds[:1] + 1, steps[:1], vocab)[0])  # another seed differs


def _chi2(counts: np.ndarray, expected: np.ndarray) -> float:
    return float(((counts - expected) ** 2 / expected).sum())


def test_gumbel_max_draws_the_softmax_and_steps_are_independent():
    """20,000 draws (seeds 0..19999) from a 7-token distribution match softmax (chi-square, 6 dof: the
    0.9999 quantile is 27.9), a -inf token is never drawn, and the draws of consecutive steps of one
    row are independent (chi-square of the 4x4 joint table of two uniform 4-token draws against 1/16 per
    cell, 15 dof: 44.3). Fixed seeds, so the test is deterministic; a biased or correlated stream fails it."""
    n = 20000
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 1.5, -math.inf])
    seeds = torch.arange(n)
    tokens = noise.pick(logits.expand(n, -1), seeds, torch.zeros(n, dtype=torch.long))
    counts = np.bincount(tokens.numpy(), minlength=8)
    p = torch.softmax(logits, -1).numpy()
    assert counts[7] == 0
    assert _chi2(counts[:7], n * p[:7]) < 27.9
    flat = torch.zeros(n, 4)
    first = noise.pick(flat, seeds, torch.full((n,), 5)).numpy()
    second = noise.pick(flat, seeds, torch.full((n,), 6)).numpy()
    joint = np.bincount(first * 4 + second, minlength=16).astype(float)
    assert _chi2(joint, np.full(16, n / 16)) < 44.3


# --------------------------------------------------------------------------- batch invariance


def _spy(monkeypatch, record):
    """Record every sampled draw's processed scores and token by (seed, step) on both sampling call sites."""
    real = noise.pick

    def spy(scores, seeds, steps):
        tokens = real(scores, seeds, steps)
        for row, (seed, step) in enumerate(zip(seeds.tolist(), steps.tolist())):
            record(seed, step, scores[row].float(), int(tokens[row]))
        return tokens
    monkeypatch.setattr(lab.intervene.decode, "pick", spy)
    monkeypatch.setattr(lab.intervene.row_choice, "pick", spy)


def _examples(n):
    prompts = load_contrast("refusal")
    return [ChatExample(prompts[i].messages, f"q{i}") for i in range(n)]


def check_batch_invariance(model, monkeypatch, new_tokens: int = 24) -> dict:
    """8 questions x 2 samples at temperature 1: every answer drawn alone (static batches of 1), in one
    static batch of 16, and through 5 continuous slots (so rows start and end at different steps).
    Returns the answers of each run by (id, sample); raises unless every divergence is explained.

    Exact by construction: the noise (the tests above). Not exact: the logits, since other batch
    shapes round differently. A draw compares v_i = fl(s_i + G_i); if every score of the row moves
    by at most d between two runs, every v_i moves by at most d + ulp(v) (the sum is rounded), so
    the winner can change only if its margin over the runner-up is <= 2 (d + ulp). So answers must
    be equal up to the first step whose margin is within that bound (d measured at that step, the
    histories being equal up to it). The continuous run here is eager (no CUDA graph), so every draw
    passes through the spy; graphs are compared with eager steps in tests/test_sampler_cuda.py."""
    examples = _examples(8)
    alone: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}
    runs: dict[str, dict[tuple[int, int], tuple[float, int]]] = {"batch16": {}, "continuous": {}}
    current = {"name": "alone"}

    def record(seed, step, scores, token):
        if current["name"] == "alone":
            alone[seed, step] = (scores.clone(), token)
        elif (seed, step) in alone:
            runs[current["name"]][seed, step] = (float((scores - alone[seed, step][0]).abs().max()), token)

    _spy(monkeypatch, record)
    base = dict(max_new_tokens=new_tokens, temperature=1.0, samples=2, seed=7)
    answers = {}
    for name, cfg in (("alone", GenerationConfig(**base, batch_size=1, decode="fast")),
                      ("batch16", GenerationConfig(**base, batch_size=16, decode="fast")),
                      ("continuous", GenerationConfig(**base, decode="continuous", max_batch=5))):
        current["name"] = name
        run = AnswerRun(model, examples, cfg)
        answers[name] = {(r["id"], r["sample"]): r["answer"] for rows in run.stream(run.plan({}), graph=False)
                         for r in rows}
    eos = set(lab.intervene.sampler.stop_ids(model))
    diverged = []
    for job in [(i, s) for i in range(8) for s in range(2)]:
        seed = run.seed(job)
        for name, got in runs.items():
            for step in range(new_tokens):
                scores, token = alone[seed, step]
                if (seed, step) not in got:
                    break
                delta, other = got[seed, step]
                if other != token:
                    key = (torch.tensor([seed], device=scores.device), torch.tensor([step], device=scores.device))
                    v = scores + noise.gumbel(*key, scores.shape[0])[0]
                    margin = float(noise.margins(scores[None], *key)[0])
                    bound = 2 * (delta + float(torch.finfo(torch.float32).eps * v.abs().max()))
                    assert margin <= bound, f"{name} row {job} step {step}: margin {margin:.3g} > bound {bound:.3g}"
                    diverged.append((name, job, step, margin, bound))
                    break
                if token in eos:
                    break
    print(f"rows diverged from their answer alone: {len(diverged)} (16 rows x 2 runs) {diverged}")
    assert diverged == []  # on SmolLM2 fp32 no row reaches a step within the bound
    assert answers["batch16"] == answers["alone"] == answers["continuous"]
    assert len(set(answers["alone"].values())) == 16  # really sampled: 16 different answers
    return answers


def test_same_seed_same_answer_alone_in_a_batch_and_in_continuous_batching(base_model, monkeypatch):
    check_batch_invariance(base_model, monkeypatch)


# --------------------------------------------------------------------------- the sampler against today's path




def test_continuous_greedy_equals_todays_path_under_every_intervention(base_model):
    """6 prompts through 2 slots (refilled as rows end, compacted in the tail), greedy, 16 new tokens:
    the answers of today's CPU path (HF generate in a static batch), with every intervention."""
    direction = torch.nn.functional.normalize(torch.randn(base_model.d_model, generator=torch.Generator().manual_seed(3)), dim=0)
    examples = _examples(6)
    texts = {}
    for name, ivs in intervention_conditions(base_model, direction, *CONDITIONS).items():
        got = {}
        for decode in ("hf", "continuous"):  # the fast path equals hf here: tests/test_decode.py
            cfg = GenerationConfig(max_new_tokens=16, temperature=0.0, decode=decode, max_batch=2)
            run = AnswerRun(base_model, examples, cfg, ivs)
            rows = [r for new in run.stream(run.plan({})) for r in new]
            got[decode] = {r["id"]: r["answer"] for r in rows}
            if decode == "continuous":
                assert run.sampler.prefills >= 3 and run.slot_plan.slots == 2
        assert got["continuous"] == got["hf"], name
        texts[name] = got["hf"]
    for name in ("add", "ablate", "ablate_prompt", "add_generated"):  # each intervention changed some answer
        assert texts[name] != texts["none"], name


def test_rows_stop_at_eos_or_at_their_limit(base_model):
    """Rows end at EOS well before max_new_tokens (same tokens as generate), or at a per-row limit."""
    from lab.intervene.sampler import ContinuousSampler, plan_slots

    examples = [ChatExample([{"role": "user", "content": q}], str(i)) for i, q in enumerate(["hi", "Say yes.", "Count to 50."])]
    run = AnswerRun(base_model, examples, GenerationConfig(max_new_tokens=60, temperature=0.0, decode="continuous"))
    eos = lab.intervene.sampler.stop_ids(base_model)
    sampling = Sampling(60)
    plan = plan_slots(base_model, int(run.prompts.lengths.max()), 60, 3, max_batch=2)
    sampler = ContinuousSampler(base_model, sampling, (), plan)
    got = dict(sampler.run([(i, run.prompts.tokens[i], 0) for i in range(3)]))
    for i in range(3):
        ids = torch.from_numpy(run.prompts.tokens[i])[None]
        reference = hf_generate(base_model, ids, torch.ones_like(ids), sampling, eos_id=eos)[0].tolist()
        assert got[i] == reference, i
    assert got[0][-1] in eos and len(got[0]) < 60
    limited = dict(sampler.run([(i, run.prompts.tokens[i], 0, 5) for i in range(3)]))
    assert all(limited[i] == got[i][:5] for i in range(3))
    # several EOS ids in the generation config (Qwen has two): a row ends at the first of any of them
    config = base_model.hf.generation_config
    before, extra = config.eos_token_id, got[2][3]
    try:
        config.eos_token_id = [before, extra] if isinstance(before, int) else [*before, extra]
        assert extra in lab.intervene.sampler.stop_ids(base_model) and extra not in eos
        early = dict(ContinuousSampler(base_model, sampling, (), plan).run([(2, run.prompts.tokens[2], 0)]))
    finally:
        config.eos_token_id = before
    assert early[2] == got[2][: got[2].index(extra) + 1]


def test_repetition_penalty_is_applied_per_row(base_model):
    """A model whose generation config sets a repetition penalty (Qwen's do): greedy continuous answers equal
    generate's for each row alone (HF's padded batches would also penalise the pad token)."""
    examples = _examples(3)
    config = base_model.hf.generation_config
    before = config.repetition_penalty
    try:
        config.repetition_penalty = 1.3
        cfg = GenerationConfig(max_new_tokens=12, temperature=0.0, decode="continuous", max_batch=2)
        rows = generate_answers(base_model, examples, cfg)
        alone = [generate_answers(base_model, [ex], GenerationConfig(max_new_tokens=12, temperature=0.0, decode="hf"))
                 [0]["answer"] for ex in examples]
        config.repetition_penalty = before
        plain = [r["answer"] for r in generate_answers(base_model, examples, cfg)]
    finally:
        config.repetition_penalty = before
    assert [r["answer"] for r in rows] == alone
    assert plain != alone  # the penalty changed what was generated


# --------------------------------------------------------------------------- resume, bad input

_WRITER = """
import sys
from lab.data import ChatExample, load_contrast
from lab.intervene.generate import GenerationConfig, generate_answers
from lab.models import load_model
prompts = load_contrast("refusal")
examples = [ChatExample(prompts[i].messages, f"q{i}") for i in range(8)]
config = GenerationConfig(max_new_tokens=20, temperature=1.0, samples=2, seed=3, decode="continuous", max_batch=3)
generate_answers(load_model(sys.argv[2]), examples, config, out_path=sys.argv[1])
"""


def test_a_killed_continuous_run_resumes_to_the_uninterrupted_file(base_model, tmp_path):
    """SIGKILL while rows stream to the file; a resumed run ends with the same bytes as a run never killed."""
    examples = _examples(8)
    config = GenerationConfig(max_new_tokens=20, temperature=1.0, samples=2, seed=3, decode="continuous", max_batch=3)
    whole = tmp_path / "whole.jsonl"
    generate_answers(base_model, examples, config, out_path=whole)
    killed = tmp_path / "killed.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(killed), MODEL], cwd=REPO, env=env)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and (not killed.exists() or killed.read_text().count("\n") < 4):
            assert proc.poll() is None, "the writer ended before it was killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    written = killed.read_text().count("\n")
    assert 4 <= written < 16
    with open(killed, "a") as f:  # a row cut short by the kill
        f.write('{"id": "q1", "sample": 0, "answ')
    generate_answers(base_model, examples, config, out_path=killed)
    assert killed.read_text() == whole.read_text()
    assert len(whole.read_text().splitlines()) == 16


def _count_forwards(model):
    calls = []
    handle = model.hf.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls, handle


def test_bad_input_fails_in_one_line_before_any_work(base_model, tmp_path):
    calls, handle = _count_forwards(base_model)
    out = tmp_path / "a.jsonl"
    try:
        long = [ChatExample([{"role": "user", "content": "word " * (base_model.n_ctx + 10)}], "long")]
        with pytest.raises(BadInput, match="context") as err:
            generate_answers(base_model, _examples(2) + long, GenerationConfig(decode="continuous"), out_path=out)
        assert "\n" not in str(err.value) and "'long'" in str(err.value)
        with pytest.raises(BadInput, match="at most") as err:
            generate_answers(base_model, _examples(2), GenerationConfig(decode="continuous", max_batch=10**7),
                             out_path=out)
        assert "\n" not in str(err.value) and "--max-batch 10000000" in str(err.value)
    finally:
        handle.remove()
    assert calls == [] and not out.exists()
