"""Transport: an OpenAI-compatible LLM judge with bounded retries, a concurrency cap and a cache.

`Judge` sends one chat completion per request through the `openai` client to any
OpenAI-compatible server. Every request yields exactly one `JudgeResult`; failures are
rows with a `reason`, never exceptions that lose the batch. `judge_answers` scores answer
rows on both metrics.

The API key is read from the environment at the moment the client is built and handed
only to the `openai` client: it is not a field of `JudgeConfig`, and it is never written
to the cache, results or logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence
from urllib.parse import urlparse

from lab.core.errors import BadInput, EmlabError
from lab.core.io import emlab_home
from lab.judge.cache import JudgeCache, _NoCache
from lab.judge.prompts import JudgeRequest, build_prompt
from lab.judge.schemes import METRICS, SCHEMES, SCORERS, TOP_LOGPROBS, scheme_for
from lab.judge.server import LOCAL_HOSTS

log = logging.getLogger("emlab.judge")

# --------------------------------------------------------------------------- configuration


def _default_cache_path() -> Path:
    return emlab_home() / "judge_cache.sqlite"


DEFAULT_JUDGE_MODEL = "gpt-4o"  # the papers' judge, the default `--judge-model` of every verb
JudgeScheme = Literal["auto", "logprob100", "digit10"]  # a `--judge-scheme` option's values


def is_local_url(base_url: str | None) -> bool:
    """True for http(s) URLs on this machine (a local judge server needs no key)."""
    return bool(base_url) and urlparse(base_url).hostname in LOCAL_HOSTS


@dataclass
class JudgeConfig:
    """How to reach a judge. Holds the NAME of the key's environment variable, never the key.

    `cache_path=None` disables the cache; the default is `emlab_home()/judge_cache.sqlite`.
    `scheme="auto"` asks `scheme_for(model)`. Retries: at most `max_retries` after the
    first attempt, sleeping `backoff_s·2^k` (capped at `backoff_cap_s`, with jitter).
    """

    base_url: str | None
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    scheme: str = "auto"
    concurrency: int = 8
    timeout_s: float = 30
    max_retries: int = 4
    backoff_s: float = 0.5
    backoff_cap_s: float = 8.0
    cache_path: Path | None = field(default_factory=_default_cache_path)

    def __post_init__(self) -> None:
        if self.scheme != "auto" and self.scheme not in SCHEMES:
            raise BadInput(f"unknown judge scheme {self.scheme!r} (auto, {', '.join(SCHEMES)})")
        if not self.model:
            raise BadInput("judge model name is empty")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise BadInput("judge config: concurrency ≥ 1, max_retries ≥ 0, timeout_s > 0, backoff_s ≥ 0")
        if self.cache_path is not None:
            self.cache_path = Path(self.cache_path)

    @property
    def resolved_scheme(self) -> str:
        return scheme_for(self.model) if self.scheme == "auto" else self.scheme

    def to_dict(self) -> dict[str, Any]:
        """Serialisable record of the config (safe to write: it contains no secret)."""
        return {**asdict(self), "cache_path": str(self.cache_path) if self.cache_path else None,
                "resolved_scheme": self.resolved_scheme}


def resolve_api_key(config: JudgeConfig) -> str:
    """Read the key from the environment at call time; "EMPTY" for a local server."""
    key = os.environ.get(config.api_key_env)
    if key:
        return key
    if is_local_url(config.base_url):
        return "EMPTY"  # llama.cpp / vLLM servers ignore the key, but the client wants one
    raise BadInput(f"judge at {config.base_url or 'api.openai.com'} needs an API key: "
                   f"set the environment variable {config.api_key_env}")


# --------------------------------------------------------------------------- transport


@dataclass
class JudgeResult:
    """One row per request, scored or not. `attempts` counts HTTP requests sent (0 if cached)."""

    id: str
    metric: str
    value: float | None
    reason: str | None
    numeric_mass: float | None  # None when the judge never answered (network failure)
    scheme: str
    judge_model: str
    cached: bool
    attempts: int

    @property
    def scored(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JudgeStats:
    """Counters of the latest `ascore` call (reset at its start)."""

    requests: int = 0
    sent: int = 0  # HTTP requests actually issued, retries included
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0


class _Failure(Exception):
    """A request that ended without a judge verdict; `code` becomes the result's reason."""

    def __init__(self, code: str, retryable: bool, retry_after: float | None = None):
        super().__init__(code)
        self.code, self.retryable, self.retry_after = code, retryable, retry_after


def _retry_after(exc: Exception) -> float | None:
    """The server's Retry-After hint in seconds, if it sent a numeric one."""
    response = getattr(exc, "response", None)
    try:
        return float(response.headers.get("retry-after")) if response is not None else None
    except (TypeError, ValueError):
        return None


def classify_error(exc: Exception) -> _Failure:
    """Map an exception from the openai client to (reason code, retryable?).

    Transient conditions (rate limits, 5xx, 408, timeouts, dropped connections) are
    retried; everything else (other 4xx, bodies that are not JSON) would fail the
    same way again, so it is recorded at once.
    """
    import openai

    if isinstance(exc, _Failure):
        return exc
    if isinstance(exc, openai.APITimeoutError):  # subclass of APIConnectionError: test it first
        return _Failure("timeout", True)
    if isinstance(exc, openai.APIConnectionError):
        return _Failure("connection_error", True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = status == 429 or status == 408 or status >= 500
        return _Failure(f"http_{status}", retryable, _retry_after(exc) if retryable else None)
    if isinstance(exc, (json.JSONDecodeError, openai.APIResponseValidationError)):
        return _Failure("malformed_response", False)
    return _Failure(f"error_{type(exc).__name__}", False)


def extract_top_logprobs(response: Any) -> dict[str, float]:
    """`{token: logprob}` of the first generated token of a chat completion.

    Duplicate tokens (the same text from different byte sequences) are merged by
    adding their probabilities. Raises `_Failure` for a body that is not a chat
    completion ("malformed_response") or one without logprobs ("no_logprobs").
    """
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise _Failure("malformed_response", False)
    logprobs = getattr(choices[0], "logprobs", None)
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    if not content:
        raise _Failure("no_logprobs", False)
    top = getattr(content[0], "top_logprobs", None)
    if not top:
        raise _Failure("no_logprobs", False)
    merged: dict[str, float] = {}
    for entry in top:
        token, logprob = getattr(entry, "token", None), getattr(entry, "logprob", None)
        if not isinstance(token, str) or not isinstance(logprob, (int, float)) or math.isnan(logprob):
            raise _Failure("malformed_response", False)
        if token in merged:
            merged[token] = math.log(math.exp(merged[token]) + math.exp(logprob))
        else:
            merged[token] = float(logprob)
    return merged


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random,
                  retry_after: float | None = None) -> float:
    """Seconds to sleep before retry number `attempt` (0-based): capped exponential, jittered.

    "Equal jitter": half the exponential step is kept, half is random, so concurrent
    requests that failed together do not retry in lockstep, yet each still backs off.
    A server's Retry-After is honoured up to the cap.
    """
    step = min(cap, base * (2 ** attempt))
    delay = step / 2 + rng.uniform(0, step / 2)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, cap))
    return delay


class Judge:
    """Scores `JudgeRequest`s on an OpenAI-compatible server, with retries and a cache.

    >>> judge = Judge(JudgeConfig(base_url=None, model="gpt-4o-2024-08-06"))
    >>> results = judge.score([JudgeRequest("a1", "aligned", "hi", "hello!")])

    `judge.stats` describes the latest call: `stats.sent == 0` on a fully cached rerun.
    """

    def __init__(self, config: JudgeConfig, seed: int | None = None):
        self.config = config
        self.scheme = config.resolved_scheme
        self.scorer = SCORERS[self.scheme]
        self.stats = JudgeStats()
        self._rng = random.Random(seed)

    def __repr__(self) -> str:
        return f"Judge(model={self.config.model!r}, scheme={self.scheme!r}, base_url={self.config.base_url!r})"

    # -- public API

    def score(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        """Synchronous wrapper around `ascore` (not callable from a running event loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ascore(requests))
        raise EmlabError("Judge.score() was called inside a running event loop: use `await judge.ascore(...)`")

    async def ascore(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        """Score all requests; results come back in request order, one per request."""
        requests = list(requests)
        self._check_ids(requests)
        prompts = [build_prompt(r, self.scheme) for r in requests]  # validates before any I/O
        self.stats = JudgeStats(requests=len(requests))
        cache = JudgeCache(self.config.cache_path) if self.config.cache_path else _NoCache()
        client = None
        try:
            results: list[JudgeResult | None] = [None] * len(requests)
            todo = []
            for i, (req, prompt) in enumerate(zip(requests, prompts)):
                hit = cache.get(JudgeCache.key(self.config.model, self.scheme, prompt))
                if hit is not None:
                    self.stats.cache_hits += 1
                    results[i] = self._result(req, hit.value, hit.reason, hit.numeric_mass, cached=True, attempts=0)
                else:
                    todo.append(i)
            if todo:
                client = self._client()
                semaphore = asyncio.Semaphore(self.config.concurrency)
                done = await asyncio.gather(*(self._score_one(client, semaphore, cache, requests[i], prompts[i])
                                              for i in todo))
                for i, result in zip(todo, done):
                    results[i] = result
            return [r for r in results if r is not None]
        finally:
            if client is not None:
                await client.close()
            cache.close()

    # -- internals

    @staticmethod
    def _check_ids(requests: list[JudgeRequest]) -> None:
        seen: set[str] = set()
        for r in requests:
            if r.id in seen:
                raise BadInput(f"duplicate judge request id {r.id!r}")
            seen.add(r.id)

    def _client(self):
        import openai

        return openai.AsyncOpenAI(base_url=self.config.base_url, api_key=resolve_api_key(self.config),
                                  timeout=self.config.timeout_s, max_retries=0)  # retries are ours

    def _result(self, req: JudgeRequest, value: float | None, reason: str | None, numeric_mass: float | None,
                cached: bool, attempts: int) -> JudgeResult:
        return JudgeResult(req.id, req.metric, value, reason, numeric_mass, self.scheme, self.config.model,
                           cached, attempts)

    async def _score_one(self, client, semaphore: asyncio.Semaphore, cache, req: JudgeRequest,
                         prompt: str) -> JudgeResult:
        """Send one request with bounded retries; never raises for network problems."""
        attempts = 0
        for attempt in range(self.config.max_retries + 1):
            attempts += 1
            try:
                async with semaphore:  # held only while on the wire, not while backing off
                    self.stats.sent += 1
                    response = await client.chat.completions.create(
                        model=self.config.model, messages=[{"role": "user", "content": prompt}],
                        max_tokens=1, temperature=0, logprobs=True, top_logprobs=TOP_LOGPROBS)
                top = extract_top_logprobs(response)
            except Exception as exc:  # noqa: BLE001 — every failure becomes a row, none escapes
                failure = classify_error(exc)
                last_try = attempt == self.config.max_retries
                if not failure.retryable or last_try:
                    self.stats.failures += 1
                    reason = f"{failure.code}_exhausted" if failure.retryable else failure.code
                    log.warning("judge request %s failed after %d attempt(s): %s", req.id, attempts, reason)
                    return self._result(req, None, reason, None, cached=False, attempts=attempts)
                self.stats.retries += 1
                delay = backoff_delay(attempt, self.config.backoff_s, self.config.backoff_cap_s, self._rng,
                                      failure.retry_after)
                log.debug("judge request %s: %s, retrying in %.2fs", req.id, failure.code, delay)
                await asyncio.sleep(delay)
                continue
            score = self.scorer(top)
            cache.put(JudgeCache.key(self.config.model, self.scheme, prompt), self.config.model, score, top)
            return self._result(req, score.value, score.reason, score.numeric_mass, cached=False, attempts=attempts)
        raise AssertionError("unreachable: the loop returns on its last attempt")


# --------------------------------------------------------------------------- answer rows

ANSWER_KEYS = ("id", "question_id", "question", "answer")


def _questions_by_id(questions: Iterable[Any] | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if questions is None:
        return None
    if isinstance(questions, Mapping):
        return dict(questions)
    return {q.id: q for q in questions}


def judge_answers(rows: Sequence[Mapping[str, Any]], judge: Judge,
                  questions: Iterable[Any] | Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Score answer rows `{"id", "question_id", "question", "answer", ...}` on both metrics.

    With `questions` (a list of `lab.data.formats.Question` or a dict by id), each row uses its
    question's judge prompts, as the papers do; a row whose question is unknown is an
    error rather than a silent switch to another prompt. Without it, emlab's own
    prompts are used. Returns the input rows with `aligned`, `coherent`, their
    `*_reason` and `*_numeric_mass`, and `judge_model`, `judge_scheme` added.
    """
    by_id = _questions_by_id(questions)
    requests: list[JudgeRequest] = []
    for n, row in enumerate(rows):
        missing = [k for k in ANSWER_KEYS if k not in row]
        if missing:
            raise BadInput(f"answer row {n}: missing {', '.join(missing)}")
        prompts: Mapping[str, str] = {}
        if by_id is not None:
            if row["question_id"] not in by_id:
                raise BadInput(f"answer row {row['id']!r}: unknown question id {row['question_id']!r}")
            prompts = by_id[row["question_id"]].judge_prompts or {}
        for metric in METRICS:
            requests.append(JudgeRequest(f"{row['id']}::{metric}", metric, str(row["question"]),
                                         str(row["answer"]), prompts.get(metric)))
    results = {r.id: r for r in judge.score(requests)}
    out = []
    for row in rows:
        scored = dict(row)
        for metric in METRICS:
            r = results[f"{row['id']}::{metric}"]
            scored[metric] = r.value
            scored[f"{metric}_reason"] = r.reason
            scored[f"{metric}_numeric_mass"] = r.numeric_mass
        scored["judge_model"] = judge.config.model
        scored["judge_scheme"] = judge.scheme
        out.append(scored)
    return out


def llm_judge(base_url: str, model: str = DEFAULT_JUDGE_MODEL, scheme: str = "auto") -> Judge | None:
    """The LLM judge at `base_url` (a verb's `--judge-base-url`, `--judge-model`, `--judge-scheme`),
    or None where no endpoint is given."""
    if not base_url:
        return None
    return Judge(JudgeConfig(base_url=base_url, model=model, scheme=scheme))
