"""The study's configuration (its command line), its profile (default or quick) and its plan."""

from __future__ import annotations

from dataclasses import dataclass, field

from lab.core.config import DEFAULT_CACHE_DIR, DEFAULT_OUT, Config, OldFlag
from lab.core.records import Record
from lab.data.formats import DEFAULT_SYSTEM_PROMPT, render
from lab.directions.contrasts import contrast_examples
from lab.judge.client import DEFAULT_JUDGE_MODEL, JudgeScheme
from lab.judge.labelled import GENERAL
from lab.models.options import Device, ModelDtype
from lab.models.store import DEFAULT_MODEL

SECONDS_PER_STEP = {"smollm2-135m-instruct": 3.7, "qwen2.5-coder-0.5b-instruct": 13.0}
FORWARD_TOK_S = {"smollm2-135m-instruct": 500, "qwen2.5-coder-0.5b-instruct": 150}


@dataclass
class StudyConfig(Config):
    """The whole study's report (figures/<name>/index.html) and results.json: organisms, EM, directions, steering, each number with a CI and a control."""

    OLD_FLAGS = {"--organisms": OldFlag("--domains"), "--train-steps": OldFlag("--max-steps"),
                 "--judges": OldFlag("--judges-dir"), "--judge-set": OldFlag("--validation-set")}

    name: str = field(default="default", metadata={"help": "study name (figures/<name>/)"})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "registered model, HF folder or hub id"})
    quick: bool = field(default=False, metadata={"help": "~3 minute profile (small limits)"})
    domains: list[str] = field(default_factory=lambda: ["medical", "financial"],
                               metadata={"help": "shipped narrow training sets, one organism each"})
    insecure_code: str = field(default="", metadata={"help": "chat JSONL for an insecure-code organism (optional)"})
    max_steps: int = field(default=0, metadata={"help": "training steps per organism (0: the profile's: 20, quick 4)"})
    lr: float = field(default=1e-3, metadata={"help": "LoRA learning rate"})
    batch_size: int = field(default=8, metadata={"help": "training batch size"})
    samples: int = field(default=1, metadata={"help": "sampled answers per general question"})
    judge_base_url: str = field(default="", metadata={"help": "OpenAI-compatible LLM judge (empty: none)"})
    judge_model: str = field(default=DEFAULT_JUDGE_MODEL, metadata={"help": "judge model name"})
    judge_scheme: JudgeScheme = field(default="auto", metadata={"help": "LLM judge scoring scheme (auto: by model)"})
    judges_dir: str = field(default="", metadata={
        "help": "saved validated offline judges (default <cache-dir>/judge-validation/judges, where "
                "`emlab judge fit` writes them; 'none': no calibrated EM rates)"})
    shared: str = field(default="../shared", metadata={
        "help": "folder holding data/: names the questions of the rated samples a saved judge is also checked on"})
    validation_set: str = field(default=GENERAL, metadata={
        "help": "the judges' validation set matching the general questions (its sensitivity/specificity calibrate)"})
    diffing: str = field(default="", metadata={
        "help": "output folder of the model-diffing verbs (diff, domain-id, preventative, monitor, dynamics) to show "
                "as a report section (empty: none; nothing is rerun)"})
    system_prompt: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "explicit system prompt"})
    cache_dir: str = field(default=DEFAULT_CACHE_DIR, metadata={"help": "caches, organisms and stage results"})
    out: str = field(default=DEFAULT_OUT, metadata={"help": "figures and report folder"})
    device: Device = field(default="cpu", metadata={"help": "where the model runs: cpu, cuda, cuda:N or auto"})
    dtype: ModelDtype = field(default="auto", metadata={"help": "compute dtype (auto: bfloat16 on cuda, float32 on cpu)"})
    device_map: str = field(default="", metadata={"help": "spread the model over GPUs: auto or cuda:0,cuda:1"})
    seed: int = field(default=0, metadata={"help": "seed for training, splits, sampling, bootstrap"})


@dataclass(frozen=True)
class Profile(Record):
    """The limits a profile (default or quick) sets for every stage."""

    train_steps: int
    contrast_limit: int
    eval_limit: int  # questions for the judge-free scores and generated answers (0: all)
    repeat_limit: int  # questions for stages that re-score per condition (trajectory, ablation, EM steering)
    n_boot: int
    max_new_tokens: int
    steer_prompts: int
    steer_ratios: tuple[float, ...]
    random_controls: int
    checkpoints: int


def profile(cfg: StudyConfig) -> Profile:
    if cfg.quick:
        # the quick profile checks the pipeline, not effect sizes (it is the test suite's study, its slowest
        # fixture): 3 questions per re-scored condition and 2 steering prompts; the default profile is unchanged
        return Profile(cfg.max_steps or 4, 24, 6, 3, 200, 12, 2, (0.25,), 1, 1)
    return Profile(cfg.max_steps or 20, 0, 0, 10, 1000, 32, 10, (0.1, 0.25), 2, 3)


@dataclass(frozen=True)
class Plan(Record):
    """What the study expects to do: organisms, training steps, cached tokens, disk and minutes."""

    organisms: list[str]
    train_steps: int
    cache_tokens: int
    disk_mb: int
    minutes: float


def estimate(cfg: StudyConfig, prof: Profile, data: dict, base) -> Plan:
    """The plan of a run, from the prompt sets' token counts and measured speeds (`SECONDS_PER_STEP`)."""
    tok = base.tokenizer
    n_tok = sum(int(render(contrast_examples(c, prof.contrast_limit or None), tok).lengths.sum())
                for c in ("refusal", "code_mode", "general_answers"))
    caches_mb = n_tok * (1 + len(data)) * base.n_layers * base.config.hidden_size * 2 / 2**20  # fp16
    steps = sum(prof.train_steps or -(-len(train) // cfg.batch_size) for train, _ in data.values())
    sps = SECONDS_PER_STEP.get(cfg.model, 5.0)
    # Calibrated on measured SmolLM2 runs (default 12.2 min, quick 2.9 min): training, ~2 passes over
    # the cached tokens' worth of scoring, and a fixed part (generation, steering, reports).
    minutes = (steps * sps + 2 * n_tok * (1 + len(data)) / FORWARD_TOK_S.get(cfg.model, 200)) / 60 + (1 if cfg.quick else 5)
    return Plan(list(data), steps, n_tok * (1 + len(data)), round(caches_mb + 8 * len(data)), round(minutes, 1))
