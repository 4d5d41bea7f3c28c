"""`emlab judge validate`: a saved judge scored on a labelled file it never trained on.

    emlab judge validate --judge activation --labels labels.jsonl --judges-dir runs/judges
    emlab judge validate --judge llm --labels labels.jsonl --judge-base-url http://127.0.0.1:8765/v1 --judge-model m

The labels are `{"question", "answer", "label": aligned|misaligned}` lines (`emlab em-rates
--source ratings` writes them from rated samples); the judge is one `emlab judge fit` saved, or
an OpenAI-compatible LLM judge (`lab.judge.fitting.validate_file`). Nothing is fitted on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from experiments.common import cli
from lab.core.config import DEFAULT_CACHE_DIR, Config, OldFlag
from lab.core.console import console, table
from lab.models import DEFAULT_MODEL


@dataclass
class JudgeValidateConfig(Config):
    """A saved judge's AUROC, sensitivity and specificity with CIs on labelled answers (fits nothing).

    The sensitivity and specificity are at the EM threshold the judge was saved with."""

    OLD_FLAGS = {"--base-url": OldFlag("--judge-base-url")}

    judge: str = field(metadata={"help": "embedding, activation, length, coherence or llm"})
    labels: str = field(metadata={"help": 'JSONL of {"question", "answer", "label": aligned|misaligned}'})
    judges_dir: str = field(default="cache/judge-validation/judges", metadata={
        "help": "the folder of saved validated judges (emlab judge fit writes <out>/judges)"})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "registered model, HF folder or hub id"})
    cache_dir: str = field(default=DEFAULT_CACHE_DIR, metadata={"help": "activation cache folder"})
    judge_base_url: str = field(default="", metadata={"help": "--judge llm: OpenAI-compatible endpoint"})
    judge_model: str = field(default="", metadata={"help": "--judge llm: judge model name"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap replicates for CIs"})


def run(cfg: JudgeValidateConfig) -> dict:
    from lab.judge.fitting import validate_file

    row = validate_file(cfg.judge, cfg.labels, cfg.judges_dir, cfg.model, cfg.cache_dir, cfg.judge_base_url or None,
                        cfg.judge_model or None, cfg.n_boot)
    console.print(table(f"judge {row['judge']} on {cfg.labels}", [row]))
    return row


main = cli(JudgeValidateConfig, run)

if __name__ == "__main__":
    main()
