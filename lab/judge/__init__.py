"""Judges: anything that maps (question, answer) to an alignment and a coherence score.

The package keeps scoring apart from transport (as inspect_ai keeps scorers apart from
model APIs), one concern per module:

- `schemes`  scoring maths, pure: a judge's first-token log-probs -> a 0-100 score
             (`score_logprob100`, the papers' scheme; `score_digit10` for digit tokenizers).
- `prompts`  the exact text a judge is asked (a question file's prompt, or emlab's own).
- `client`   the OpenAI-compatible LLM judge (`Judge`, `JudgeConfig`): retries, a
             concurrency cap, one result row per request; `judge_answers` for answer rows.
- `cache`    the sqlite verdict cache, safe for concurrent processes (WAL + busy timeout + retry).
- `server`   a local llama-cpp-python judge server on localhost.
- `validated` judges that emlab trains and validates itself (embedding, activation,
             coherence), the `AnswerJudge` protocol, and validation on labelled answers.
- `criteria` the papers' thresholds and EM criteria on 0-100 scores (`EM_CRITERIA`).
- `choice`   the best saved validated judge for a set of answers (`best_validated_judge`).
- `fitting`  fit-then-validate (`fit_and_validate`), the judge-validation run, `validate_file`.
"""

from lab.judge.cache import JudgeCache
from lab.judge.criteria import ALIGNED_FLAG, COHERENT_ABOVE, EM_CRITERIA
from lab.judge.client import (DEFAULT_JUDGE_MODEL, Judge, JudgeConfig, JudgeResult, JudgeScheme, JudgeStats,
                              backoff_delay, classify_error, extract_top_logprobs, is_local_url, judge_answers,
                              llm_judge, resolve_api_key)
from lab.judge.prompts import DEFAULT_PROMPTS, DIGIT10_SUFFIX, JudgeRequest, build_prompt, fill_template
from lab.judge.schemes import (METRICS, MIN_NUMERIC_MASS, SCHEMES, SCORERS, JudgeScore, scheme_for, score_digit10,
                               score_logprob100)
from lab.judge.server import serve_local_judge, stop_local_judge

__all__ = [
    "ALIGNED_FLAG", "COHERENT_ABOVE", "EM_CRITERIA", "DEFAULT_JUDGE_MODEL", "JudgeScheme", "llm_judge",
    "DEFAULT_PROMPTS", "DIGIT10_SUFFIX", "METRICS", "MIN_NUMERIC_MASS", "SCHEMES", "SCORERS",
    "Judge", "JudgeCache", "JudgeConfig", "JudgeRequest", "JudgeResult", "JudgeScore", "JudgeStats",
    "backoff_delay", "build_prompt", "classify_error", "extract_top_logprobs", "fill_template", "is_local_url",
    "judge_answers", "resolve_api_key", "scheme_for", "score_digit10", "score_logprob100", "serve_local_judge",
    "stop_local_judge",
    # lab.judge.validated / labelled (loaded on first use: they import torch)
    "AnswerJudge", "Composed", "JudgedScores", "LLMAnswerJudge", "LabelledAnswer", "TrainedJudge", "Validated",
    "Validation", "load_validated", "read_labelled", "save_validated", "validate",
    # lab.judge.choice / fitting
    "JudgeChoice", "best_validated_judge", "fit_and_validate", "JudgeValidationConfig", "run_judge_validation",
    "validate_file",
]

_LAZY = {"LabelledAnswer": "labelled", "read_labelled": "labelled", "JudgeChoice": "choice",
         "best_validated_judge": "choice", "fit_and_validate": "fitting", "JudgeValidationConfig": "fitting",
         "run_judge_validation": "fitting", "validate_file": "fitting"}


def __getattr__(name: str):
    """Judges emlab trains (`validated`) load lazily, so `from lab.judge import Judge` stays light."""
    import importlib

    if name in __all__ and name not in globals():
        return getattr(importlib.import_module(f"lab.judge.{_LAZY.get(name, 'validated')}"), name)
    raise AttributeError(f"module 'lab.judge' has no attribute {name!r}")
