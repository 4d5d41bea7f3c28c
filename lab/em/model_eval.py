"""One model evaluated for EM on a question set: answers sampled (data-parallel under torchrun),
then code-mode and refusal rates, and judged EM with an LLM judge (`lab.em.answers.evaluate`).

Over several GPUs, one process per GPU (rank r samples on cuda:r; the answers file has a single
process's rows, order and seeds, and its text when every process runs the same kernels; rank 0
scores, judges and reports).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.core.config import Config, DEFAULT_OUT, OldFlag, config_dict
from lab.core.errors import BadInput
from lab.core.io import out_folder, sha256_json, write_rows
from lab.data.formats import DEFAULT_SYSTEM_PROMPT, read_questions_yaml
from lab.em.answers import EvalResult, evaluate, question_examples, shipped_questions
from lab.intervene.generate import GenerationConfig
from lab.judge.client import DEFAULT_JUDGE_MODEL, JudgeScheme, llm_judge
from lab.models import DEFAULT_MODEL
from lab.models.options import Device, ModelDtype


@dataclass
class EvalConfig(Config):
    """Evaluate a model for emergent misalignment."""

    OLD_FLAGS = {"--limit": OldFlag("--eval-limit"), "--batch-size": OldFlag("--gen-batch-size")}

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "registered model, HF folder or hub id"})
    adapters: list[str] = field(default_factory=list, metadata={"help": "PEFT adapter folder(s)"})
    questions: str = field(default="general", metadata={"help": "'general' (shipped) or a question YAML path"})
    eval_limit: int = field(default=0, metadata={"help": "first N questions only (0: all)"})
    samples: int = field(default=2, metadata={"help": "samples per paraphrase"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    max_new_tokens: int = field(default=64, metadata={"help": "max new tokens per answer"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    gen_batch_size: int = field(default=16, metadata={"help": "generation batch size (static paths)"})
    max_batch: int = field(default=0, metadata={
        "help": "continuous-batching slots (0: as many as GPU memory holds; CPU: --gen-batch-size)"})
    system_prompt: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={
        "help": "explicit system prompt, for questions without their own `system`"})
    judge_base_url: str = field(default="", metadata={"help": "OpenAI-compatible judge endpoint (empty: none)"})
    judge_model: str = field(default=DEFAULT_JUDGE_MODEL, metadata={"help": "judge model name"})
    judge_scheme: JudgeScheme = field(default="auto", metadata={"help": "judge scoring scheme (auto: by model)"})
    out: str = field(default=DEFAULT_OUT, metadata={"help": "output folder"})
    device: Device = field(default="cpu", metadata={"help": "where the model runs: cpu, cuda, cuda:N or auto"})
    dtype: ModelDtype = field(default="auto", metadata={"help": "compute dtype (auto: bfloat16 on cuda, float32 on cpu)"})
    device_map: str = field(default="", metadata={"help": "spread the model over GPUs: auto or cuda:0,cuda:1"})


@dataclass
class ModelEval:
    """What `evaluate_model` measured on rank 0 (`result`), where its files are, and the sampling time."""

    result: EvalResult
    rows: list[dict]
    n_questions: int
    out: Path
    answer_seconds: float
    ranks: int


@dataclass
class EvalSetup:
    """Everything `evaluate_model` checks and loads before sampling: bad input fails here, in one line,
    before a verb shows any progress."""

    questions: list
    judge: object  # the LLM judge, or None
    ranks: object  # lab.intervene.shards.Ranks
    model: object  # the loaded LabModel, weights resident
    gen: GenerationConfig
    out: Path


def prepare_eval(cfg: EvalConfig) -> EvalSetup:
    """Read the questions, build the judge, load the model and pick the output folder."""
    from lab.intervene.shards import Ranks
    from lab.models import load_model

    questions = (shipped_questions(cfg.eval_limit or None) if cfg.questions == "general"
                 else read_questions_yaml(cfg.questions)[: cfg.eval_limit or None])
    judge = llm_judge(cfg.judge_base_url, cfg.judge_model, cfg.judge_scheme)  # a bad setting fails before sampling
    ranks = Ranks.from_env()  # torchrun: one process per GPU
    if ranks.world > 1 and cfg.device_map:
        raise BadInput("--device-map spreads one model over GPUs; under torchrun each rank holds its own copy")
    model = load_model(cfg.model, cfg.adapters, dtype=cfg.dtype, device=ranks.device(cfg.device),
                       device_map=cfg.device_map)
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, samples=cfg.samples,
                           seed=cfg.seed, batch_size=cfg.gen_batch_size, system_prompt=cfg.system_prompt,
                           max_batch=cfg.max_batch)
    # --max-batch changes how fast, not what is sampled: the folder (and a resume) does not depend on it
    keyed = {k: v for k, v in config_dict(cfg).items() if k != "max_batch"}
    out = out_folder(cfg.out, f"em_eval/{model.name}-{sha256_json(keyed)[:8]}")
    model.hf  # load the weights before the clock starts (answer_seconds times sampling, not loading)
    return EvalSetup(questions, judge, ranks, model, gen, out)


def evaluate_model(cfg: EvalConfig, on_batch=None, setup: EvalSetup | None = None) -> ModelEval | None:
    """Sample the answers (this rank's share under torchrun), then on rank 0 score and judge them;
    writes `<out>/em_eval/<model>-<config hash>/answers.jsonl` and `answers_table.*`. None on other ranks.
    `setup`: what `prepare_eval(cfg)` returned, where the caller prepared first."""
    from lab.intervene.shards import sample_answers

    s = setup or prepare_eval(cfg)
    s.ranks.barrier()
    start = time.perf_counter()
    sample_answers(s.model, question_examples(s.questions, system_prompt=s.gen.system_prompt), s.gen,
                   s.out / "answers.jsonl", on_batch=on_batch, ranks=s.ranks)
    answer_seconds = time.perf_counter() - start
    if s.ranks.rank != 0:
        return None
    # the answers are in the file: evaluate reads them back (no generation) and scores them
    rows, result = evaluate(s.model, s.questions, s.gen, s.judge, s.out / "answers.jsonl")
    write_rows([{k: v for k, v in r.items() if k not in ("settings",)} for r in rows], s.out / "answers_table")
    return ModelEval(result, rows, len(s.questions), s.out, round(answer_seconds, 3), s.ranks.world)
