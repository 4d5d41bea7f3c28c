"""What a contrast is fitted on: the cache interface, and the seeded train/test split by id.

`split_contrast(cache, "misaligned", "aligned", ...)` picks a contrast's examples and labels
from a cache, splits them into train and test by example id (by group when the cache pairs
examples, so both members of a pair land on the same side), and checks that both sides can
support a direction. The `Split` it returns is the one record of what was held out: the
fitted `Direction`s carry its ids, and experiments score effects on `split.test_ids` or
`split.held_out_groups()` instead of re-deriving it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
from jaxtyping import Float, Int

from lab.data.formats import split_ids
from lab.directions.validation import MIN_PER_CLASS, MIN_TEST_PER_CLASS
from lab.core.errors import BadInput
from lab.core.io import sha256_json


class CacheLike(Protocol):
    """What directions need from a cache (`lab.cache.ActivationCache`, `lab.directions.contrasts.FeatureView`).

    Rows are examples; `groups` (or None) pairs rows that must share a side of the split.
    """

    ids: list[str]
    labels: list[str]
    model_fingerprint: str
    d_model: int
    n_layers: int
    attrs: dict

    @property
    def layers(self) -> list[int]: ...

    @property
    def groups(self) -> list[str] | None: ...

    def label_array(self, positive: str) -> Int[np.ndarray, " n"]: ...

    def stack(self, pooling: str = "last", layers: list[int] | None = None, examples=None,
              k: int = 8) -> Float[np.ndarray, "layer n d"]: ...


@dataclass(frozen=True, eq=False)
class Split:
    """A contrast's examples (rows), their 0/1 labels and which rows are held out.

    `train` / `test` index the rows (`ids`, `y`, and the features a fit stacks); `groups`
    is each row's group (its id when the cache has no groups).
    """

    ids: tuple[str, ...]
    groups: tuple[str, ...]
    y: Int[np.ndarray, " n"]
    train: Int[np.ndarray, " n_train"]
    test: Int[np.ndarray, " n_test"]
    rows: Int[np.ndarray, " n"]     # each row's index in the cache
    positive_label: str
    negative_label: str | None
    seed: int
    test_fraction: float
    stratify: bool
    data_hash: str

    @property
    def train_ids(self) -> tuple[str, ...]:
        return tuple(self.ids[i] for i in self.train)

    @property
    def test_ids(self) -> tuple[str, ...]:
        return tuple(self.ids[i] for i in self.test)

    def held_out_groups(self) -> set[str]:
        """Groups (paired questions; ids if ungrouped) in the test split: what a direction
        fitted on this split never saw. Score effects of the direction on these."""
        return {self.groups[i] for i in self.test}


def _id_score(seed: int, example_id: str) -> float:
    """The seeded per-id hash of `lab.data.formats.split_ids`, as a number in [0, 1]."""
    return int(hashlib.sha256(f"{seed}:{example_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def split_examples(ids: Sequence[str], y: Int[np.ndarray, " n"], test_fraction: float = 0.25, seed: int = 0,
                   stratify: bool = True) -> tuple[Int[np.ndarray, " n_train"], Int[np.ndarray, " n_test"]]:
    """Fixed, seeded train/test example indices, decided by example id.

    `stratify=False` is exactly `lab.data.formats.split_ids` (each id independently goes to test
    with probability `test_fraction`). `stratify=True` ranks the ids of each class by the
    same seeded hash and sends the first round(test_fraction * n_class) to test (at least
    one, never all), so both splits keep the class balance. Either way an id's side does
    not depend on the order of the examples, and an id keeps its side when other examples
    are added (up to the per-class count, when stratified).
    """
    ids = list(ids)
    y = np.asarray(y)
    if len(set(ids)) != len(ids):
        raise BadInput("example ids are not unique; a split by id needs unique ids")
    if not 0 < test_fraction < 1:
        raise BadInput(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not stratify:
        side = split_ids(ids, test_fraction, seed)
        is_test = np.array([side[i] == "test" for i in ids])
    else:
        is_test = np.zeros(len(ids), dtype=bool)
        for cls in np.unique(y):
            members = np.flatnonzero(y == cls)
            ranked = members[np.argsort([_id_score(seed, ids[i]) for i in members], kind="stable")]
            k = min(max(round(test_fraction * len(members)), 1), len(members) - 1)
            is_test[ranked[:k]] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def split_contrast(cache: CacheLike, positive_label: str, negative_label: str | None = None, pooling: str = "last",
                   test_fraction: float = 0.25, seed: int = 0, stratify: bool = True) -> Split:
    """Labels and train/test split of a contrast in a cache, with every check a fit needs.

    Class 1 is the examples labelled `positive_label`; class 0 is every other example, or
    only those labelled `negative_label` when it is given (others are left out). Reads no
    features: `pooling` only enters the data hash.
    """
    labels = list(cache.labels)
    if positive_label not in labels:
        found = sorted({str(lab) for lab in labels})[:10]
        raise BadInput(f"no example is labelled {positive_label!r} (labels: {', '.join(found)})")
    if negative_label is None:  # everything else is the control class
        keep = np.arange(len(labels))
    else:
        keep = np.array([i for i, lab in enumerate(labels) if lab in (positive_label, negative_label)])
    y = np.asarray(cache.label_array(positive_label), dtype=np.int64)[keep]
    if y.min() == y.max():
        raise BadInput(f"no example besides those labelled {positive_label!r} "
                       f"{'is left' if negative_label is None else f'is labelled {negative_label!r}'}; "
                       "a contrast needs a second class")
    ids = [cache.ids[i] for i in keep]
    groups = cache.groups
    if groups is not None:  # paired data: both members of a group land on the same side
        kept_groups = [groups[i] for i in keep]
        side = split_ids(sorted(set(kept_groups)), test_fraction, seed)
        is_test = np.array([side[g] == "test" for g in kept_groups])
        train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    else:
        kept_groups = ids
        train, test = split_examples(ids, y, test_fraction, seed, stratify)
    for name, idx, need in (("train", train, MIN_PER_CLASS), ("test", test, MIN_TEST_PER_CLASS)):
        counts = np.bincount(y[idx], minlength=2)
        if counts.min() < need:
            raise BadInput(f"too few examples: the {name} split has {counts[0]} of class 0 and {counts[1]} of "
                           f"class 1 ({positive_label!r}); at least {need} per class are needed")
    data_hash = sha256_json({
        "cache": cache.attrs.get("key", ""), "model": cache.model_fingerprint,
        "positive": positive_label, "negative": negative_label, "pooling": pooling,
        "train_ids": sorted(ids[i] for i in train),
    })
    return Split(tuple(ids), tuple(kept_groups), y, train, test, keep, positive_label, negative_label, seed,
                 test_fraction, stratify, data_hash)
