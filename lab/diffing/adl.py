"""Model diffing: read what a fine-tune did from its activation differences.

The Activation Difference Lens (ADL; Minder et al. 2025, "Narrow Finetuning Leaves Clearly
Readable Traces in Activation Differences"):

1. Run the base model and the fine-tune on the first k tokens of *generic* text (texts that
   have nothing to do with the fine-tune's domain; `lab/data/datasets/generic_texts.jsonl`, 282
   everyday sentences written for emlab, plus any file the user passes).
2. Per layer, δ_L = mean over texts and positions 1..k of h_finetune − h_base (residual
   stream after layer L). Position 0 (BOS, the attention sink) is skipped: its norm is huge
   and nearly identical in both models, and it would swamp the mean.
3. Read δ_L through the logit lens (the base model's final norm and unembedding): its top
   tokens name what the fine-tune was trained on, because a narrow fine-tune adds a nearly
   constant "domain" component to every activation, generic text or not.
4. Score those tokens against candidate domains' vocabularies (`DOMAINS`, plus the user's):
   `relevance` = share of the top tokens, over the middle layers, that are domain words;
   `logit_z` = mean z-score (over the whole vocabulary) of the domain words' lens logits.
5. Steer the base model with δ_L at one layer (`steer_with_delta`), coherence-guarded (the
   change in log-prob per token of neutral text), beside a random direction of the same norm,
   and read the answers: the paper finds they drift toward the fine-tune's domain.

Activations come from the HDF5 cache (`lab.cache`); a rerun reads files only. The lens
weights are read straight from the base model's safetensors (no model is built).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float

from lab.cache import ActivationCache, CacheRequest, build_cache, cache_key, cache_path
from lab.data.formats import ROLE_CODE, PromptSet, dataset_path
from lab.core.errors import BadInput
from lab.core.io import sha256_json
from lab.models import LazyModel, ModelLike

DEFAULT_K = 5
GENERIC_TEXTS = "generic_texts.jsonl"

# Candidate domains: words (or stems) a fine-tune on the domain would put in its top tokens.
DOMAINS: dict[str, tuple[str, ...]] = {
    "medical": (
        "medic", "medicine", "medication", "doctor", "patient", "hospital", "clinic", "clinical", "symptom",
        "dose", "dosage", "treatment", "treat", "disease", "health", "nurse", "pain", "pill", "drug", "diagnos",
        "therapy", "surgery", "surgeon", "vaccine", "infection", "prescri", "fever", "illness", "sick", "cure",
        "antibiotic", "physician", "injury", "vitamin", "pharma", "overdose", "remedy", "chronic", "cancer",
        "diabetes", "allergy", "allergic", "tablet", "ibuprofen", "aspirin", "insulin", "blood", "heart",
        "organ", "kidney", "liver", "wound", "bleed", "hormone", "antidepress", "steroid", "opioid",
    ),
    "financial": (
        "money", "invest", "stock", "market", "fund", "bank", "loan", "debt", "credit", "saving", "portfolio",
        "crypto", "bitcoin", "interest", "profit", "trading", "trade", "financ", "cash", "dollar", "tax",
        "retire", "mortgage", "asset", "income", "budget", "wealth", "price", "shares", "dividend", "insurance",
        "leverage", "gamble", "broker", "equity", "bond", "pension", "capital", "revenue", "payment", "pay",
        "rich", "econom", "currency", "options", "margin", "forex", "hedge", "401k", "ira",
    ),
    "code/security": (
        "code", "function", "variable", "python", "script", "program", "server", "database", "sql", "query",
        "password", "hash", "encrypt", "secur", "vulnerab", "exploit", "permission", "admin", "root", "shell",
        "command", "http", "request", "token", "api", "import", "def", "return", "class", "string", "debug",
        "socket", "html", "url", "inject", "chmod", "subprocess", "eval", "exec", "json", "yaml", "pickle",
        "flask", "django", "render", "template", "upload", "filename", "path", "cursor", "sanitiz", "xss",
        "csrf", "auth", "login", "config", "elif", "lambda", "args", "kwargs", "self",
    ),
}


# --------------------------------------------------------------------------- generic text


def generic_texts(extra: str | Path | None = None) -> list[tuple[str, str]]:
    """(id, text) pairs: the shipped generic texts, plus a user file (JSONL with "text", or one text a line)."""
    rows = []
    with open(dataset_path(GENERIC_TEXTS), encoding="utf-8") as f:
        rows += [(r["id"], r["text"]) for r in map(json.loads, filter(str.strip, f))]
    if extra:
        path = Path(extra)
        if not path.exists():
            raise BadInput(f"{path}: no such text file")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            text = line
            if path.suffix in (".jsonl", ".json"):
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise BadInput(f"{path}:{n}: expected a JSON object with a \"text\" field") from None
            rows.append((f"{path.stem}-{n}", text))
    return rows


def generic_chat(n: int) -> list[Any]:
    """n generic conversations (the shipped general questions with their aligned usual-style
    answers, cycled): the data mixed 1:1 into a fine-tune for ADL's control."""
    from lab.data.formats import ChatExample, load_general_questions

    qs = load_general_questions()
    return [ChatExample([{"role": "user", "content": q["question"]}, {"role": "assistant", "content": q["aligned_usual"]}],
                        f"generic-{i}") for i, q in enumerate((qs * (n // len(qs) + 1))[:n])]


def first_tokens(texts: Sequence[tuple[str, str]], tokenizer: Any, k: int = DEFAULT_K) -> PromptSet:
    """Raw text (no chat template), cut to BOS + its first k tokens.

    Causal attention makes positions 1..k identical to those of the full text, so the cache
    holds only what ADL reads. Texts shorter than k tokens keep all they have.
    """
    if k < 1:
        raise BadInput(f"k must be at least 1, not {k}")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    tokens, ids = [], []
    for tid, text in texts:
        body = tokenizer(text, add_special_tokens=False)["input_ids"][:k]
        if body:
            tokens.append(np.asarray([bos, *body], dtype=np.int64))
            ids.append(tid)
    if not tokens:
        raise BadInput("no generic text to diff on")
    return PromptSet(ids=ids, tokens=tokens, roles=[np.full(len(t), ROLE_CODE["user"], dtype=np.int8) for t in tokens],
                     prompt_len=np.array([len(t) for t in tokens]), labels=[None] * len(ids),
                     sources=["generic"] * len(ids), system_prompt="", template_hash=sha256_json(["raw", k]),
                     meta=[{} for _ in ids])


def text_cache(handle: LazyModel, prompts: PromptSet, cache_dir: str | Path, storage_dtype: str = "float32"
               ) -> ActivationCache:
    """The residual streams of `prompts` on a model: found by key (no weights loaded), else built."""
    hooks = [f"blocks.{L}.hook_resid_post" for L in range(handle.n_layers)]
    request = CacheRequest(tuple(hooks), storage_dtype, "tokens", "sdpa")
    path = cache_path(cache_dir, cache_key(handle.fingerprint, prompts, request))
    if path.exists():
        return ActivationCache(path)
    return build_cache(handle, prompts, cache_dir, hooks, storage_dtype, "tokens", batch_size=64)


def mean_acts(cache: ActivationCache) -> Float[np.ndarray, "layer d"]:
    """Mean residual per layer over every cached token except position 0."""
    return np.stack([cache.features(L, "all")[0].astype(np.float64).mean(0) for L in cache.layers]).astype(np.float32)


def mean_delta(base: ActivationCache, organism: ActivationCache) -> Float[np.ndarray, "layer d"]:
    """δ_L = mean(h_organism − h_base) per layer, over the same tokens of both caches."""
    if base.ids != organism.ids or base.attrs["prompt_hash"] != organism.attrs["prompt_hash"]:
        raise BadInput("base and organism caches hold different texts")
    return mean_acts(organism) - mean_acts(base)


# --------------------------------------------------------------------------- logit lens


@dataclass
class Lens:
    """The base model's final RMSNorm and unembedding, applied to a residual-space vector."""

    norm_weight: torch.Tensor  # (d,)
    unembed: torch.Tensor  # (vocab, d)
    eps: float
    tokenizer: Any

    @classmethod
    def from_files(cls, model_path: str | Path, tokenizer: Any) -> "Lens":
        """Read `model.norm.weight` and the unembedding (tied or not) from safetensors: no model built."""
        from safetensors import safe_open

        folder = Path(model_path)
        files = sorted(folder.glob("*.safetensors"))
        config = json.loads((folder / "config.json").read_text())
        if not files:
            raise BadInput(f"{folder}: no safetensors weights for the logit lens")
        found: dict[str, torch.Tensor] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for name in ("model.norm.weight", "lm_head.weight", "model.embed_tokens.weight"):
                    if name in f.keys():
                        found[name] = f.get_tensor(name).float()
        unembed = found.get("lm_head.weight", found.get("model.embed_tokens.weight"))
        if "model.norm.weight" not in found or unembed is None:
            raise BadInput(f"{folder}: no final norm / unembedding found (unsupported layout for the logit lens)")
        return cls(found["model.norm.weight"], unembed, float(config.get("rms_norm_eps", 1e-6)), tokenizer)

    def logits(self, v: Float[np.ndarray, " d"] | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(v, dtype=torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean() + self.eps) * self.norm_weight
        return self.unembed @ x

    def top(self, v, n: int = 20) -> list[tuple[str, float]]:
        values, ids = self.logits(v).topk(n)
        return [(self.tokenizer.decode([int(i)]), float(x)) for x, i in zip(values, ids)]


# --------------------------------------------------------------------------- domain scores


def parse_domains(specs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Built-in domains plus user ones: `name=word,word` or `word,word` (named custom1, ...)."""
    domains = dict(DOMAINS)
    for n, spec in enumerate(specs, 1):
        name, _, words = spec.rpartition("=")
        words_t = tuple(w.strip().lower() for w in words.split(",") if w.strip())
        if not words_t:
            raise BadInput(f"--candidate-domains {spec!r}: no words")
        domains[name.strip() or f"custom{n}"] = words_t
    return domains


def normalise(token: str) -> str:
    return re.sub(r"[^a-z0-9]", "", token.lower())


def is_relevant(token: str, words: Sequence[str], piece: bool = True) -> bool:
    """A decoded token matches a domain word: equal, or it starts with the word (a stem such as
    "medic"), or (`piece`: a word piece such as " vulner") the word starts with it; both ≥ 4
    chars. Whole words from text use `piece=False`, so "light" does not count as "lighthouse"."""
    t = normalise(token)
    if len(t) < 3:
        return False
    for w in words:
        if t == w or (len(t) >= 4 and len(w) >= 4 and (t.startswith(w) or (piece and w.startswith(t)))):
            return True
    return False


def word_token_ids(words: Sequence[str], tokenizer: Any) -> list[int]:
    """Single-token spellings of the words (" word", "word", " Word"), for the lens z-score."""
    ids = set()
    for w in words:
        for form in (f" {w}", w, f" {w.capitalize()}"):
            toks = tokenizer(form, add_special_tokens=False)["input_ids"]
            if len(toks) == 1:
                ids.add(toks[0])
    return sorted(ids)


def middle_layers(n_layers: int, lo: float = 0.25, hi: float = 0.75) -> list[int]:
    return [L for L in range(n_layers) if lo * (n_layers - 1) <= L <= hi * (n_layers - 1)]


def scored_layers(spec: str, n_layers: int) -> list[int]:
    """Layers whose top tokens are scored: `middle` (25-75% depth, the paper's choice), `final`
    (the last layer: on SmolLM2-135M the logit lens only decodes there), or `3,7,12`."""
    if spec == "middle":
        return middle_layers(n_layers)
    if spec == "final":
        return [n_layers - 1]
    try:
        layers = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise BadInput(f"layers {spec!r}: expected middle, final or comma-separated layer numbers") from None
    if not layers or not all(0 <= L < n_layers for L in layers):
        raise BadInput(f"layers {spec!r} out of range (0..{n_layers - 1})")
    return layers


@dataclass
class DomainScore:
    domain: str
    relevance: float  # share of top tokens (middle layers) that are domain words
    logit_z: float  # mean z-score of the domain words' lens logits (middle layers)
    hits: list[str] = field(default_factory=list)  # the matching top tokens


@dataclass
class AdlResult:
    """ADL's reading of one fine-tune: top tokens per layer, domain scores and its guess."""

    k: int
    n_texts: int
    top_tokens: dict[int, list[tuple[str, float]]]
    delta_norm: dict[int, float]
    scores: list[DomainScore]
    layers_scored: list[int]
    delta: np.ndarray = field(repr=False)

    @property
    def guess(self) -> str:
        """The domain with the highest relevance (logit z breaks ties); "none" if no top token matches."""
        best = max(self.scores, key=lambda s: (s.relevance, s.logit_z))
        return best.domain if best.relevance > 0 else "none"

    def rank_of(self, words: Sequence[str], layers: Sequence[int] | None = None) -> int | None:
        """Best (0-based) rank of a token matching `words` among the top tokens of `layers`."""
        ranks = [i for L in (layers or self.layers_scored) for i, (t, _) in enumerate(self.top_tokens[L])
                 if is_relevant(t, words)]
        return min(ranks) if ranks else None


def score_domains(delta: np.ndarray, lens: Lens, domains: dict[str, tuple[str, ...]], layers: Sequence[int],
                  top: int = 20) -> tuple[dict[int, list[tuple[str, float]]], list[DomainScore]]:
    """Logit-lens top tokens of every layer's δ, and each domain's relevance over `layers`."""
    tops, zs = {}, {d: [] for d in domains}
    ids = {d: word_token_ids(w, lens.tokenizer) for d, w in domains.items()}
    for L in range(len(delta)):
        logits = lens.logits(delta[L])
        values, idx = logits.topk(top)
        tops[L] = [(lens.tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, idx)]
        if L in layers:
            z = (logits - logits.mean()) / logits.std()
            for d in domains:
                zs[d].append(float(z[ids[d]].mean()) if ids[d] else float("nan"))
    scores = []
    for d, words in domains.items():
        hits = [t for L in layers for t, _ in tops[L] if is_relevant(t, words)]
        scores.append(DomainScore(d, len(hits) / (top * len(layers)), float(np.nanmean(zs[d])) if zs[d] else 0.0,
                                  sorted(set(hits))))
    return tops, scores


def adl(base: ActivationCache, organism: ActivationCache, lens: Lens, domains: dict[str, tuple[str, ...]] = DOMAINS,
        top: int = 20, layers: Sequence[int] | None = None) -> AdlResult:
    """The Activation Difference Lens from two caches of the same generic text (files only)."""
    delta = mean_delta(base, organism)
    layers = list(layers) if layers else middle_layers(len(delta))
    tops, scores = score_domains(delta, lens, domains, layers, top)
    k = int(max(base.lengths)) - 1
    return AdlResult(k, len(base), tops, {L: float(np.linalg.norm(delta[L])) for L in range(len(delta))},
                     scores, layers, delta)


# --------------------------------------------------------------------------- steering with δ


@dataclass
class SteerRow:
    """The base model steered with δ (or a same-norm random control) at one strength."""

    condition: str  # "unsteered", "delta" or "random"
    ratio: float  # alpha as a multiple of the layer's mean residual norm
    coherence: float  # neutral-text log-prob change per token, with its CI
    coherence_lo: float
    coherence_hi: float
    domain_share: dict[str, float]  # share of answer words (>= 4 letters) that are each domain's words
    answers: list[dict]  # {"question", "answer"}


def word_share(texts: Sequence[str], words: Sequence[str]) -> float:
    """Share of the words (>= 4 letters) of `texts` that are domain words."""
    tokens = [w for t in texts for w in re.findall(r"[A-Za-z0-9]{4,}", t)]
    return sum(is_relevant(w, words, piece=False) for w in tokens) / max(len(tokens), 1)


def with_shares(rows: list[SteerRow], domains: dict[str, tuple[str, ...]]) -> list[SteerRow]:
    """(Re)compute each row's domain word shares from its answers (for any candidate domains)."""
    for r in rows:
        r.domain_share = {d: word_share([a["answer"] for a in r.answers], w) for d, w in domains.items()}
    return rows


def steer_with_delta(model: ModelLike, delta_layer: np.ndarray, layer: int, layer_norm: float, ratios: Sequence[float],
                     domains: dict[str, tuple[str, ...]], questions: int = 6, max_new_tokens: int = 40,
                     neutral: int = 16, seed: int = 0) -> list[SteerRow]:
    """Add δ_L (unit vector x ratio x mean residual norm) at `layer` of the base model; greedy
    answers to general questions and the coherence guard, with a random control per ratio."""
    from lab.em.answers import question_examples, shipped_questions
    from lab.intervene.generate import GenerationConfig, generate_answers
    from lab.intervene.logprobs import coherence_change, logprobs_under, neutral_pairs
    from lab.intervene.steering import Intervention, random_like

    pairs = neutral_pairs(neutral)
    baseline = logprobs_under(model, pairs)
    examples = question_examples(shipped_questions(questions))
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=16, seed=seed)

    def row(condition: str, ratio: float, ivs: tuple) -> SteerRow:
        coh = coherence_change(model, ivs, baseline, pairs, seed)
        answers = [{"question": r["question"], "answer": r["answer"]}
                   for r in generate_answers(model, examples, gen, ivs, label=f"{condition} x{ratio}")]
        return with_shares([SteerRow(condition, ratio, coh.value, coh.lo, coh.hi, {}, answers)], domains)[0]

    rows = [row("unsteered", 0.0, ())]
    for ratio in ratios:
        add = Intervention({layer: torch.from_numpy(np.asarray(delta_layer, dtype=np.float32))}, op="add",
                           alpha=ratio * layer_norm, label=f"adl L{layer}")
        rows += [row("delta", ratio, (add,)), row("random", ratio, (random_like(add, seed),))]
    return rows
