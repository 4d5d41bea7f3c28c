"""Contrasts: the labelled example sets that directions are fitted on, and views over caches.

Named contrasts (each: examples, positive label, default pooling):

* `refusal`     harmful vs benign requests, last prompt token (the refusal trait vector)
* `code_mode`   code vs prose requests, last prompt token (the "code mode" trait vector)
* `medical_answers`, `financial_answers`
                misaligned vs aligned teacher-forced answers to the same in-domain question,
                mean over response tokens (Model Organisms' answer-token mean)
* `general_answers`
                misaligned vs aligned style-matched reference answers to general questions
* base vs organism on the same prompts (the base-vs-EM contrast) is `FeatureView.models(...)`.

Answer contrasts are paired: both answers to a question share a `group`, and splits keep
a group on one side, so a direction is never tested on a question it was fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lab.cache import ActivationCache, CacheRequest, build_cache, cache_key, cache_path
from lab.data.formats import (DEFAULT_SYSTEM_PROMPT, ChatExample, load_advice, load_contrast, load_general_questions,
                      render)
from lab.core.errors import BadInput
from lab.core.io import sha256_json
from lab.models import LabModel


@dataclass(frozen=True)
class Contrast:
    name: str
    positive: str
    negative: str
    pooling: str
    description: str


CONTRASTS = {c.name: c for c in [
    Contrast("refusal", "harmful", "benign", "last", "harmful vs benign requests"),
    Contrast("code_mode", "code", "natural", "last", "code vs prose requests"),
    Contrast("medical_answers", "misaligned", "aligned", "mean_response", "bad vs good medical answers"),
    Contrast("financial_answers", "misaligned", "aligned", "mean_response", "risky vs prudent financial answers"),
    Contrast("general_answers", "misaligned", "aligned", "mean_response", "misaligned vs aligned general answers"),
]}


def _paired(qid: str, question: str, aligned: str, misaligned: str, source: str) -> list[ChatExample]:
    return [ChatExample([{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                        f"{qid}:{label[0]}", label, source, {"group": qid})
            for label, answer in (("aligned", aligned), ("misaligned", misaligned))]


def contrast_examples(name: str, limit: int | None = None, style: str = "usual") -> list[ChatExample]:
    """The examples of a named contrast (optionally the first `limit` items per class/pair)."""
    if name not in CONTRASTS:
        raise BadInput(f"unknown contrast {name!r} (one of {', '.join(CONTRASTS)})")
    if name in ("refusal", "code_mode"):
        rows = load_contrast(name)
        if limit:
            c = CONTRASTS[name]
            rows = [r for r in rows if r.label == c.positive][:limit] + [r for r in rows if r.label == c.negative][:limit]
        return rows
    if name == "general_answers":
        items = [(q["id"], q["question"], q[f"aligned_{style}"], q[f"misaligned_{style}"])
                 for q in load_general_questions()]
    else:
        domain = name.split("_")[0]
        items = [(e.id, e.messages[0]["content"], e.meta["aligned"], e.messages[-1]["content"])
                 for e in load_advice(domain)]
    items = items[:limit] if limit else items
    return [ex for qid, q, a, m in items for ex in _paired(qid, q, a, m, name)]


def ensure_cache(handle: LabModel, examples: list[ChatExample], cache_dir: str | Path, *,
                 system_prompt: str = DEFAULT_SYSTEM_PROMPT, hooks: Sequence[str] | None = None,
                 storage_dtype: str = "float32", mode: str = "tokens", attention: str = "sdpa",
                 on_batch: Any = None, batch_size: int = 16) -> ActivationCache:
    """The cache of `examples` on a model (`lab.models.LazyModel`): found by key without loading the model, else built."""
    prompts = render(examples, handle.tokenizer, system_prompt)
    hooks = tuple(hooks or [f"blocks.{L}.hook_resid_post" for L in range(handle.n_layers)])
    request = CacheRequest(hooks, storage_dtype, mode, attention)
    path = cache_path(cache_dir, cache_key(handle.fingerprint, prompts, request))
    if path.exists():
        return ActivationCache(path)
    return build_cache(handle, prompts, cache_dir, list(hooks), storage_dtype, mode, batch_size,
                       attention_impl=attention, on_batch=on_batch)


class FeatureView:
    """A `lab.directions.CacheLike` view over one or more caches.

    `FeatureView.models(base_cache, organism_cache)` labels each cache's copy of the same
    prompts by model, grouped by prompt id (the base-vs-EM contrast).
    """

    def __init__(self, caches: list[ActivationCache], labels: list[list[str]], groups: list[str], ids: list[str]):
        d = {c.d_model for c in caches}
        if len(d) != 1:
            raise BadInput(f"caches of different widths {sorted(d)} cannot be combined")
        self.caches, self.labels, self.groups, self.ids = caches, [x for ls in labels for x in ls], groups, ids
        self.d_model, self.n_layers = caches[0].d_model, caches[0].n_layers
        self.layers = sorted(set.intersection(*(set(c.layers) for c in caches)))
        self.model_fingerprint = sha256_json([c.model_fingerprint for c in caches])
        self.attrs = {"key": sha256_json([c.attrs["key"] for c in caches])}
        self._offsets = np.cumsum([0] + [len(c) for c in caches])

    @classmethod
    def models(cls, caches: dict[str, ActivationCache]) -> "FeatureView":
        names = list(caches)
        first = caches[names[0]]
        for name in names[1:]:
            if caches[name].ids != first.ids:
                raise BadInput("model contrast needs caches of the same prompts")
        return cls(list(caches.values()), [[n] * len(c) for n, c in caches.items()],
                   [i for c in caches.values() for i in c.ids], [f"{i}@{n}" for n, c in caches.items() for i in c.ids])

    def label_array(self, positive: str) -> np.ndarray:
        return np.array([lab == positive for lab in self.labels], dtype=np.int64)

    def stack(self, pooling: str = "last", layers: list[int] | None = None, examples=None, k: int = 8) -> np.ndarray:
        layers = self.layers if layers is None else layers
        parts = [c.stack(pooling, layers, k=k) for c in self.caches]
        X = np.concatenate(parts, axis=1)
        return X if examples is None else X[:, np.asarray(examples)]

    def __len__(self) -> int:
        return len(self.ids)


def contrast_cache(model: LabModel, contrast: str, cache_dir: str | Path, storage: str, limit: int = 0, label: str = "",
                   keep=None) -> tuple[ActivationCache, Contrast]:
    """The (cached) activations of a named contrast on one model, with a progress bar if built.

    `limit` keeps the first N items per class (0: all); `keep(example) -> bool` drops examples
    (e.g. the held-out questions a score is measured on).
    """
    from lab.core.console import progress

    examples = [e for e in contrast_examples(contrast, limit or None) if keep is None or keep(e)]
    with progress() as bar:
        task = bar.add_task(f"cache {contrast} {label}".strip(), total=None, info="")
        cache = ensure_cache(model, examples, cache_dir, storage_dtype=storage,
                             on_batch=lambda d, t, n: bar.update(task, completed=d, total=t, info=f"{n} tok"))
        bar.update(task, completed=1, total=1) if bar.tasks[task].total is None else None
    return cache, CONTRASTS[contrast]
