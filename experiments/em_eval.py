"""EM evaluation of one model (base or organism): answers, code-mode and refusal rates, judged EM.

    python -m experiments.em_eval --questions general --samples 2
    python -m experiments.em_eval --questions ../shared/data/em-questions/first_plot_questions.yaml \\
        --judge-base-url http://127.0.0.1:8765/v1 --judge-model smollm2

Without a judge, only judge-free numbers are reported (no internet here: no strong judge).

Over several GPUs, one process per GPU (rank r samples on cuda:r; the answers file is the one a
single process writes, same seeds, same rows; rank 0 scores, judges and reports):

    torchrun --standalone --nproc-per-node 2 -m experiments.em_eval --device cuda --samples 50
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments.common import cli
from lab.core.io import out_folder
from lab.models.options import Device, ModelDtype
from lab.judge.client import DEFAULT_JUDGE_MODEL, JudgeScheme, llm_judge
from lab.core.config import DEFAULT_OUT, Config, config_dict
from lab.core.console import console, progress, table
from lab.core.errors import BadInput
from lab.data.formats import DEFAULT_SYSTEM_PROMPT, read_questions_yaml
from lab.em.answers import evaluate, question_examples, shipped_questions
from lab.intervene.generate import GenerationConfig
from lab.core.io import sha256_json, write_json_atomic, write_rows
from lab.models import DEFAULT_MODEL, load_model
from lab.intervene.shards import Ranks, sample_answers


@dataclass
class EvalConfig(Config):
    """Evaluate a model for emergent misalignment."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "registered model, HF folder or hub id"})
    adapters: list[str] = field(default_factory=list, metadata={"help": "PEFT adapter folder(s)"})
    questions: str = field(default="general", metadata={"help": "'general' (shipped) or a question YAML path"})
    limit: int = field(default=0, metadata={"help": "first N questions only (0: all)"})
    samples: int = field(default=2, metadata={"help": "samples per paraphrase"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    max_new_tokens: int = field(default=64, metadata={"help": "max new tokens per answer"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    batch_size: int = field(default=16, metadata={"help": "generation batch size"})
    system_prompt: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={
        "help": "explicit system prompt, for questions without their own `system`"})
    judge_base_url: str = field(default="", metadata={"help": "OpenAI-compatible judge endpoint (empty: none)"})
    judge_model: str = field(default=DEFAULT_JUDGE_MODEL, metadata={"help": "judge model name"})
    judge_scheme: JudgeScheme = field(default="auto", metadata={"help": "judge scoring scheme (auto: by model)"})
    out: str = field(default=DEFAULT_OUT, metadata={"help": "output folder"})
    device: Device = field(default="cpu", metadata={"help": "where the model runs: cpu, cuda, cuda:N or auto"})
    dtype: ModelDtype = field(default="auto", metadata={"help": "compute dtype (auto: bfloat16 on cuda, float32 on cpu)"})
    device_map: str = field(default="", metadata={"help": "spread the model over GPUs: auto or cuda:0,cuda:1"})


def run(cfg: EvalConfig) -> dict:
    questions = (shipped_questions(cfg.limit or None) if cfg.questions == "general"
                 else read_questions_yaml(cfg.questions)[: cfg.limit or None])
    judge = llm_judge(cfg.judge_base_url, cfg.judge_model, cfg.judge_scheme)  # a bad judge setting fails now, not after the sampling
    ranks = Ranks.from_env()  # torchrun: one process per GPU
    if ranks.world > 1 and cfg.device_map:
        raise BadInput("--device-map spreads one model over GPUs; under torchrun each rank holds its own copy")
    model = load_model(cfg.model, cfg.adapters, dtype=cfg.dtype, device=ranks.device(cfg.device),
                       device_map=cfg.device_map)
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, samples=cfg.samples,
                           seed=cfg.seed, batch_size=cfg.batch_size, system_prompt=cfg.system_prompt)
    out = out_folder(cfg.out, f"em_eval/{model.name}-{sha256_json(config_dict(cfg))[:8]}")
    model.hf  # load the weights before the clock starts (answer_seconds times sampling, not loading)
    ranks.barrier()
    start = time.perf_counter()
    with progress() as bar:
        task = bar.add_task(f"answers (rank {ranks.rank} of {ranks.world})" if ranks.world > 1 else "answers",
                            total=None, info="")
        sample_answers(model, question_examples(questions, system_prompt=gen.system_prompt), gen,
                       out / "answers.jsonl", on_batch=lambda d, t: bar.update(task, completed=d, total=t, info=""),
                       ranks=ranks)
    answer_seconds = time.perf_counter() - start
    if ranks.rank != 0:
        return {}
    # the answers are in the file: evaluate reads them back (no generation) and scores them
    rows, summary = evaluate(model, questions, gen, judge, out / "answers.jsonl")
    summary["answer_seconds"], summary["ranks"] = round(answer_seconds, 3), ranks.world
    write_rows([{k: v for k, v in r.items() if k not in ("settings",)} for r in rows], out / "answers_table")
    summary["config"] = config_dict(cfg)
    write_json_atomic(out / "summary.json", summary)
    lines = [{"measure": measure, "value [95% CI]": str(est), "n": est.n}
             for measure, est in (("code-mode rate", summary["code_mode_rate"]), ("refusal rate", summary["refusal_rate"]))]
    for name, em in summary.get("em", {}).items():
        lines.append({"measure": f"EM rate ({name})", "value [95% CI]": str(em.estimate),
                      "n": f"{em.estimate.n} counted, {em.n_unscored} unscored"})
    console.print(table(f"EM evaluation: {model.name} {'+ ' + ','.join(Path(a).name for a in cfg.adapters) if cfg.adapters else ''}"
                        f" ({len(questions)} questions x {cfg.samples} samples)", lines))
    if "em" not in summary:
        console.print("[yellow]no judge configured: judged EM rates not computed (see --judge-base-url)[/]")
    console.print(f"answers: {out / 'answers.jsonl'}")
    return summary


main = cli(EvalConfig, run)


if __name__ == "__main__":
    main()
