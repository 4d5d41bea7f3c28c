"""Training dynamics of rank-1 LoRA organisms (Turner et al. 2025, "Model Organisms for EM").

A rank-1 adapter on a `down_proj` adds B (A·x) to the residual stream: A (d_ff) reads one
scalar per token from the MLP hidden state, B (d_model) is the direction written. Over the
checkpoints of a run (`lab.training.lora` folders `checkpoints/step-*`):

* `norm`          |B·A| = |B| |A| (the Frobenius norm of the rank-1 update), per checkpoint;
* `local_cosine`  cos(v_s, v_{s-k}) of the adapter vector (B; with several adapters, their Bs
                  concatenated) between checkpoints k steps apart: an abrupt rotation (the
                  paper's phase transition, where EM appears) is a dip;
* `pca_path`      the vectors projected on their top principal components (the path bends).

LoRA probing (nine-adapter organisms): each adapter's per-token scalar A·x is a feature;
an L1 logistic probe on the nine scalars of answer tokens separates in-domain answers from
general ones, and its non-zero weights say which adapters carry the domain
(`lora_probe`; features from `adapter_scalars`, cached by `experiments.dynamics`).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float

from lab.core.errors import BadInput
from lab.models import ModelLike

_MODULE = re.compile(r"layers\.(\d+)\.mlp\.down_proj\.lora_([AB])\.weight$")


@dataclass
class Rank1:
    """One rank-1 down_proj adapter: A (d_ff,), B (d_model,) at `layer` (scale folded into B)."""

    layer: int
    A: Float[np.ndarray, " d_ff"]
    B: Float[np.ndarray, " d_model"]

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.A) * np.linalg.norm(self.B))


def lora_scale(folder: Path) -> float:
    """alpha / r (or alpha / sqrt(r) with rslora), from adapter_config.json."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    r, alpha = cfg.get("r", 1), cfg.get("lora_alpha", 1)
    return alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r


def read_rank1(folder: str | Path) -> list[Rank1]:
    """The rank-1 down_proj adapters of a PEFT folder, ordered by layer."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    file = folder / "adapter_model.safetensors"
    if not file.exists():
        raise BadInput(f"{folder}: no adapter_model.safetensors")
    parts: dict[int, dict[str, np.ndarray]] = {}
    for name, w in load_file(str(file)).items():
        m = _MODULE.search(name)
        if m:
            parts.setdefault(int(m.group(1)), {})[m.group(2)] = w.astype(np.float32)
    if not parts:
        raise BadInput(f"{folder}: no down_proj LoRA weights (dynamics reads rank-1 down_proj adapters)")
    scale = lora_scale(folder)
    out = []
    for layer, p in sorted(parts.items()):
        if p["A"].shape[0] != 1:
            raise BadInput(f"{folder}: layer {layer} adapter has rank {p['A'].shape[0]}, not 1")
        out.append(Rank1(layer, p["A"][0], p["B"][:, 0] * scale))
    return out


@dataclass
class AdapterPath:
    """A run's rank-1 adapters over checkpoints."""

    steps: list[int]
    layers: list[int]
    B: Float[np.ndarray, "ckpt adapter d_model"]
    norms: Float[np.ndarray, "ckpt adapter"]

    @property
    def vectors(self) -> Float[np.ndarray, "ckpt dims"]:
        """Each checkpoint's Bs concatenated (one adapter: its B)."""
        return self.B.reshape(len(self.steps), -1)

    @classmethod
    def from_checkpoints(cls, folders: Sequence[Path], steps: Sequence[int]) -> "AdapterPath":
        adapters = [read_rank1(f) for f in folders]
        layers = [a.layer for a in adapters[0]]
        if any([a.layer for a in ad] != layers for ad in adapters):
            raise BadInput("checkpoints of one run hold adapters at different layers")
        return cls(list(map(int, steps)), layers, np.stack([[a.B for a in ad] for ad in adapters]),
                   np.array([[a.norm for a in ad] for ad in adapters]))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")


def local_cosine(vectors: Float[np.ndarray, "ckpt dims"], steps: Sequence[int], k: int) -> list[tuple[int, int, float]]:
    """(step, earlier step, cosine) for each checkpoint and the latest checkpoint at least k steps before it.

    With checkpoints every c steps and k a multiple of c the gap is exactly k; otherwise the
    earlier step is the nearest one k or more steps back (the gap is reported).
    """
    steps = list(steps)
    if len(steps) != len(vectors):
        raise BadInput(f"{len(vectors)} vectors for {len(steps)} steps")
    if k < 1:
        raise BadInput(f"k must be >= 1, got {k}")
    out = []
    for j, s in enumerate(steps):
        earlier = [i for i, t in enumerate(steps) if t <= s - k]
        if earlier:
            i = earlier[-1]
            out.append((s, steps[i], cosine(vectors[j], vectors[i])))
    return out


def transition(local: Sequence[tuple[int, int, float]], min_earlier: int = 0) -> tuple[int, float] | None:
    """The step where the adapter rotates most abruptly (lowest local cosine) and that cosine.

    `min_earlier`: ignore comparisons with checkpoints before this step. B starts at zero, so
    its first few checkpoints point wherever the first gradients did and the earliest local
    cosines are low for no reason but that; a transition is looked for after them.
    """
    ok = [(s, c) for s, e, c in local if not np.isnan(c) and e >= min_earlier]
    return min(ok, key=lambda x: x[1]) if ok else None


@dataclass
class PcaPath:
    coords: Float[np.ndarray, "ckpt comp"]
    explained: Float[np.ndarray, " comp"]  # share of the variance over checkpoints


def pca_path(vectors: Float[np.ndarray, "ckpt dims"], n: int = 2) -> PcaPath:
    """The vectors (centred over checkpoints) on their top `n` principal components."""
    X = np.asarray(vectors, dtype=np.float64)
    if len(X) < 2:
        raise BadInput("a PCA path needs at least two checkpoints")
    Xc = X - X.mean(0)
    U, S, _ = np.linalg.svd(Xc, full_matrices=False)
    n = min(n, len(S))
    total = float((S ** 2).sum()) or 1.0
    return PcaPath((U[:, :n] * S[:n]).astype(np.float32), (S[:n] ** 2 / total).astype(np.float32))


# --------------------------------------------------------------------------- LoRA probing


def adapter_scalars(model: ModelLike, adapters: Sequence[Rank1], examples: list, system_prompt: str | None = None,
                    batch_size: int = 16) -> list[Float[np.ndarray, "token adapter"]]:
    """Per example, the adapters' scalars A·x at each assistant token (x: the down_proj input,
    i.e. the MLP hidden state of the model given, adapters active or not)."""
    from lab.data.formats import DEFAULT_SYSTEM_PROMPT, ROLE_CODE, render

    prompts = render(examples, model.tokenizer, system_prompt or DEFAULT_SYSTEM_PROMPT)
    hf = model.hf
    layers = hf.get_decoder().layers
    device = next(hf.parameters()).device
    A = [torch.from_numpy(a.A).to(device) for a in adapters]
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for i, a in enumerate(adapters):  # keyed by position: a layer may carry a real and a control adapter
        def pre(module, args, i=i):
            captured[i] = (args[0].float() @ A[i]).detach()
        handles.append(layers[a.layer].mlp.down_proj.register_forward_pre_hook(pre))
    out: list[np.ndarray] = []
    pad = model.tokenizer.pad_token_id or 0
    try:
        with torch.no_grad():
            for s in range(0, len(examples), batch_size):
                toks = prompts.tokens[s: s + batch_size]
                width = max(len(t) for t in toks)
                ids = torch.full((len(toks), width), pad, dtype=torch.long)
                mask = torch.zeros((len(toks), width), dtype=torch.long)
                for i, t in enumerate(toks):
                    ids[i, : len(t)], mask[i, : len(t)] = torch.from_numpy(t), 1
                hf(input_ids=ids.to(device), attention_mask=mask.to(device))
                feats = torch.stack([captured[i] for i in range(len(adapters))], -1).cpu().numpy()
                for i, t in enumerate(toks):
                    answer = prompts.roles[s + i] == ROLE_CODE["assistant"]
                    out.append(feats[i, : len(t)][answer].astype(np.float32))
    finally:
        for h in handles:
            h.remove()
    return out


@dataclass
class ProbeResult:
    """An L1 logistic probe on per-token adapter scalars: held-out AUROC and which adapters it uses."""

    layers: list[int]
    coef: list[float]  # on standardized scalars, one per adapter
    auroc: float
    auroc_lo: float
    auroc_hi: float
    single_auroc: list[float]  # each adapter's scalar alone (held out, sign-free: max(a, 1 - a))
    n_train_tokens: int
    n_test_tokens: int
    C: float
    carriers: list[int] = field(default_factory=list)  # layers with a non-zero weight, largest first


def lora_probe(features: Sequence[np.ndarray], labels: Sequence[int], groups: Sequence[str], layers: Sequence[int],
               C: float = 0.05, test_fraction: float = 0.3, seed: int = 0, n_boot: int = 1000) -> ProbeResult:
    """L1 logistic regression on token features (tokens of one example share its label and
    its side of the split: `groups` are example ids, split by `lab.data.formats.split_ids`)."""
    from sklearn.linear_model import LogisticRegression

    from lab.data.formats import split_ids
    from lab.stats.metrics import auroc, bootstrap_ci

    if len(features) != len(labels) or len(features) != len(groups):
        raise BadInput("one label and one group per example")
    if len(set(labels)) != 2:
        raise BadInput("the probe needs examples of both classes")
    # an offset seed: held-out advice questions are themselves `split_ids(..., seed)`'s test side, and the
    # same seed would put every one of them on this probe's test side too
    side = split_ids(sorted(set(groups)), test_fraction, seed + 7919)
    parts = {"train": ([], []), "test": ([], [])}
    for f, y, g in zip(features, labels, groups):
        parts[side[g]][0].append(f)
        parts[side[g]][1].append(np.full(len(f), int(y)))
    Xtr, ytr = np.concatenate(parts["train"][0]), np.concatenate(parts["train"][1])
    Xte, yte = np.concatenate(parts["test"][0]), np.concatenate(parts["test"][1])
    if len(set(ytr)) < 2 or len(set(yte)) < 2:
        raise BadInput("both classes are needed on both sides of the split (more examples)")
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-8
    with warnings.catch_warnings():  # sklearn >= 1.8 deprecates `penalty` (l1_ratio=1 there); older ones need it
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        clf = LogisticRegression(penalty="l1", C=C, solver="liblinear", random_state=seed).fit((Xtr - mu) / sd, ytr)
    score = clf.decision_function((Xte - mu) / sd)
    v, lo, hi = bootstrap_ci(auroc, score, yte, n_boot=n_boot, seed=seed)
    single = [float(max(a, 1 - a)) for a in (float(auroc(Xte[:, j], yte)) for j in range(Xte.shape[1]))]
    coef = clf.coef_[0]
    carriers = [int(layers[j]) for j in np.argsort(-np.abs(coef)) if abs(coef[j]) > 0]
    return ProbeResult(list(map(int, layers)), coef.astype(float).tolist(), float(v), float(lo), float(hi), single,
                       len(ytr), len(yte), C, carriers)
