"""The continuous sampler on a GPU (skipped without CUDA): real SmolLM2 in fp32, graphs, the fused noise
kernel, data-parallel ranks. Run on the lent GPU machine:

    python -m pytest tests/test_sampler_cuda.py -q -s
"""

import json
import math

import pytest
import torch

from lab.intervene import sampling_noise as noise
from lab.core.errors import BadInput, ModelNotFound
from lab.intervene.generate import AnswerRun, GenerationConfig, generate_answers
from lab.intervene.steering import Intervention
from tests.conftest import intervention_conditions
from tests.test_sampler import CONDITIONS, _examples, check_batch_invariance

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def cuda_model():
    from lab.models import load_model

    try:
        model = load_model("smollm2-135m-instruct", dtype="float32", device="cuda")
        model.hf
    except ModelNotFound as exc:
        pytest.skip(f"SmolLM2 weights not installed here: {exc}")
    return model


def _answers(model, examples, cfg, ivs=(), **options):
    run = AnswerRun(model, examples, cfg, ivs)
    rows = [r for new in run.stream(run.plan({}), **options) for r in new]
    return {(r["id"], r["sample"]): r["answer"] for r in rows}, run


def test_fused_noise_kernel_gives_the_eager_tokens():
    """The compiled (Triton) draw and the eager ops: same integer bits, same table gather, one add, so
    the same tokens; and the CUDA noise equals the CPU noise bit for bit."""
    gen = torch.Generator().manual_seed(0)
    rows, vocab = 300, 49152
    scores = (3 * torch.randn(rows, vocab, generator=gen)).cuda()
    seeds = torch.randint(0, 2**32, (rows,), generator=gen).cuda()
    steps = torch.randint(0, 600, (rows,), generator=gen).cuda()
    assert torch.equal(noise.gumbel(seeds, steps, vocab).cpu(), noise.gumbel(seeds.cpu(), steps.cpu(), vocab))
    fused = noise.pick(scores, seeds, steps)
    assert noise._FUSED.get("pick") is not None, "torch.compile of the noise kernel failed here (see the warning)"
    eager = noise._pick(scores, seeds, steps, noise._token_offsets(vocab, scores.device), noise.gumbel_table("cuda"))
    assert torch.equal(fused, eager)
    assert torch.equal(noise.pick(scores[:7], seeds[:7], steps[:7]), eager[:7])  # another row count, same draws


def test_greedy_continuous_equals_hf_generate(cuda_model):
    """Real SmolLM2 fp32 on the GPU, captured graphs, 6 prompts in 4 slots: generate's greedy answers,
    with no intervention, add, ablate, prompt-only ablate and generated-only add."""
    direction = torch.nn.functional.normalize(torch.randn(cuda_model.d_model, generator=torch.Generator().manual_seed(3)), dim=0)
    examples = _examples(6)
    for name, ivs in intervention_conditions(cuda_model, direction, *CONDITIONS).items():
        hf, _ = _answers(cuda_model, examples, GenerationConfig(max_new_tokens=32, temperature=0.0, decode="hf"), ivs)
        cont, run = _answers(cuda_model, examples, GenerationConfig(max_new_tokens=32, temperature=0.0,
                                                                    decode="continuous", max_batch=4), ivs)
        assert run.sampler.slots.graph and run.sampler.slots.graphs  # the step really was a replayed graph
        assert cont == hf, name


def test_batch_invariance_in_fp32(cuda_model, monkeypatch):
    """Alone vs a static batch of 16 vs continuous slots, on the GPU (see tests/test_sampler.py)."""
    check_batch_invariance(cuda_model, monkeypatch)


def test_graph_and_eager_steps_draw_the_same_answers(cuda_model):
    examples = _examples(8)
    cfg = GenerationConfig(max_new_tokens=48, temperature=1.0, samples=3, seed=2, decode="continuous", max_batch=7)
    ivs = (Intervention({L: torch.ones(cuda_model.d_model) for L in range(cuda_model.n_layers)}, op="ablate",
                        positions="generated"),)
    graph, run = _answers(cuda_model, examples, cfg, ivs, graph=True)
    assert len(run.sampler.slots.graphs) >= 2  # the tail moved rows to smaller captured steps
    eager, _ = _answers(cuda_model, examples, cfg, ivs, graph=False)
    assert graph == eager


def test_seeded_sampling_is_reproducible_run_to_run(cuda_model):
    examples = _examples(8)
    cfg = GenerationConfig(max_new_tokens=40, temperature=1.0, samples=4, seed=11)
    first = generate_answers(cuda_model, examples, cfg)
    assert {r["decode"] for r in first} == {"continuous"}  # auto on CUDA
    again = generate_answers(cuda_model, examples, cfg)
    other = generate_answers(cuda_model, examples, GenerationConfig(max_new_tokens=40, temperature=1.0, samples=4, seed=12))
    assert [r["answer"] for r in first] == [r["answer"] for r in again]
    assert [r["answer"] for r in first] != [r["answer"] for r in other]
    assert len({r["answer"] for r in first}) > 24  # 32 draws, mostly different


def test_max_batch_beyond_gpu_memory_is_one_line(cuda_model):
    with pytest.raises(BadInput, match="at most") as err:
        AnswerRun(cuda_model, _examples(2), GenerationConfig(decode="continuous", max_batch=10**6))
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_ranks_write_the_one_process_answers(cuda_model, tmp_path):
    """torchrun em_eval on two GPUs (continuous on each) writes the file one process writes."""
    from lab.em.answers import question_examples, shipped_questions
    from tests.test_shards import torchrun

    args = ["--eval-limit", "6", "--samples", "4", "--max-new-tokens", "32", "--device", "cuda", "--dtype", "float32",
            "--temperature", "1.0", "--seed", "5", "--out", str(tmp_path / "dp")]
    torchrun("experiments.em_rates", *args)
    [answers] = list((tmp_path / "dp").glob("em_eval/*/answers.jsonl"))
    gen = GenerationConfig(max_new_tokens=32, temperature=1.0, samples=4, seed=5)
    single = tmp_path / "single.jsonl"
    generate_answers(cuda_model, question_examples(shipped_questions(6), system_prompt=gen.system_prompt), gen,
                     out_path=single)
    rows = [json.loads(line) for line in single.read_text().splitlines()]
    assert len(rows) == 24 and {r["decode"] for r in rows} == {"continuous"}
    assert answers.read_text() == single.read_text()
    assert math.isfinite(json.loads((answers.parent / "summary.json").read_text())["answer_seconds"])
