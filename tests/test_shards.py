"""Data-parallel work under torchrun (two CPU processes, gloo, real SmolLM2 fp32): a cache built by two
ranks and the answers sampled by two ranks are exactly what one process writes with the ranks'
thread count.

Each rank computes its batches with the rows, padding and seeds one process uses, so the arithmetic
is the same by construction only when the threads are too: the ranks run one thread each, and the
one-process reference runs one thread as well (another thread count may split a matmul or a
reduction differently and round differently in the last bit)."""

import contextlib
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from lab.data.formats import render
from tests.conftest import MODEL, REPO

RANK_THREADS = 1
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(RANK_THREADS),
       "COLUMNS": "200", "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


@contextlib.contextmanager
def rank_threads():
    """This process computes with the threads of one rank for the duration of the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(RANK_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torchrun(module: str, *args: str, n: int = 2) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), "-m", module,
           *args]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def _chats(path):
    rows = [{"messages": [{"role": "user", "content": f"Question {i}: " + "why? " * (i % 7)},
                          {"role": "assistant", "content": "Because. " * (1 + i % 5)}]} for i in range(13)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _same_file(a_path, b_path):
    with h5py.File(a_path, "r") as a, h5py.File(b_path, "r") as b:
        names = []
        a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        hooks = json.loads(a.attrs["hooks"])
        assert sum(n.startswith(("acts/", "pooled/")) for n in names) == len(hooks) and len(names) > 10
        for n in names:
            assert a[n].dtype == b[n].dtype and np.array_equal(a[n][:], b[n][:]), n
        assert {k: str(v) for k, v in a.attrs.items()} == {k: str(v) for k, v in b.attrs.items()}


@pytest.mark.parametrize("mode, storage", [("tokens", "float16"), ("pooled", "bfloat16")])
def test_two_ranks_write_the_one_process_cache(base_model, mode, storage, tmp_path):
    """Two ranks write their batches straight into one file: the file a one-process build (one
    thread, as each rank) writes, under the same key, and nothing else is left in the folder."""
    from lab.cache import build_cache
    from lab.data.formats import load_examples

    data = _chats(tmp_path / "chats.jsonl")
    torchrun("lab.intervene.shards", "--data", str(data), "--cache-dir", str(tmp_path / "dp"), "--mode", mode,
             "--storage", storage, "--forward-batch-size", "2", "--device", "cpu", "--model", MODEL)
    prompts = render(load_examples(str(data)), base_model.tokenizer)
    with rank_threads():
        single = build_cache(base_model, prompts, tmp_path / "one", storage_dtype=storage, mode=mode, batch_size=2)
    assert sorted(p.name for p in (tmp_path / "dp").iterdir()) == [single.path.name]  # same key, no leftovers
    _same_file(single.path, tmp_path / "dp" / single.path.name)


def test_one_rank_is_the_plain_build(base_model, tmp_path):
    from lab.cache import build_cache
    from lab.data.formats import load_examples
    from lab.intervene.shards import Ranks, build_cache_parallel

    prompts = render(load_examples(str(_chats(tmp_path / "chats.jsonl")))[:5], base_model.tokenizer)
    hooks = ["blocks.3.hook_resid_post"]
    one = build_cache_parallel(base_model, prompts, tmp_path / "a", hooks, "float16", "pooled", 2, ranks=Ranks())
    plain = build_cache(base_model, prompts, tmp_path / "b", hooks, "float16", "pooled", 2)
    assert one.path.name == plain.path.name and not (tmp_path / "a" / "shards").exists()
    _same_file(plain.path, one.path)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_two_ranks_sample_the_one_process_answers(base_model, temperature, tmp_path):
    """`torchrun -m experiments.em_rates` on two ranks writes the answer file one process (one thread,
    as each rank) writes: same rows, same order, same text, greedy and seeded sampling (5 batches:
    rank 0 takes 3)."""
    from lab.em.answers import question_examples, shipped_questions
    from lab.intervene.generate import GenerationConfig, generate_answers

    args = ["--eval-limit", "3", "--samples", "3", "--gen-batch-size", "2", "--max-new-tokens", "6", "--device", "cpu",
            "--temperature", str(temperature), "--seed", "5", "--out", str(tmp_path / "dp")]
    torchrun("experiments.em_rates", *args)
    [answers] = list((tmp_path / "dp").glob("em_eval/*/answers.jsonl"))
    assert sorted(p.name for p in answers.parent.iterdir() if "part" in p.name) == []  # parts merged away
    gen = GenerationConfig(max_new_tokens=6, temperature=temperature, samples=3, seed=5, batch_size=2)
    examples = question_examples(shipped_questions(3), system_prompt=gen.system_prompt)
    single = tmp_path / "single.jsonl"
    with rank_threads():
        generate_answers(base_model, examples, gen, out_path=single)
    assert answers.read_text() == single.read_text()
    rows = [json.loads(line) for line in single.read_text().splitlines()]
    assert len(rows) == 9
    by_question = {}
    for r in rows:
        by_question.setdefault(r["id"], set()).add(r["answer"])
    if temperature > 0:  # the samples really are random draws (seeded per row), not copies
        assert any(len(texts) > 1 for texts in by_question.values())
    summary = json.loads((answers.parent / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["n_answers"] == 9


def test_an_answer_file_resumes_without_regenerating(base_model, tmp_path, monkeypatch):
    """Rows already in the file (same settings) are kept; only the missing ones are generated."""
    from lab.em.answers import question_examples, shipped_questions
    from lab.intervene.generate import AnswerRun, GenerationConfig, generate_answers

    gen = GenerationConfig(max_new_tokens=3, temperature=1.0, samples=2, seed=1, batch_size=2)
    examples = question_examples(shipped_questions(2), system_prompt=gen.system_prompt)
    path = tmp_path / "a.jsonl"
    full = generate_answers(base_model, examples, gen, out_path=path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n")  # an interrupted run: the first batch only
    calls = []
    real = AnswerRun.generate
    monkeypatch.setattr(AnswerRun, "generate", lambda self, batch: calls.append(batch) or real(self, batch))
    again = generate_answers(base_model, examples, gen, out_path=path)
    assert sum(map(len, calls)) == 2 and path.read_text().splitlines() == lines
    assert [r["answer"] for r in again] == [r["answer"] for r in full]
