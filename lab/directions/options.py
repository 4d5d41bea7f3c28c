"""The options of every analysis verb: the model (`ModelOptions`) plus caches, output, split and CIs."""

from __future__ import annotations

from dataclasses import dataclass, field

from lab.cache import ANALYSIS_STORAGE, StorageDtype
from lab.core.config import DEFAULT_CACHE_DIR, DEFAULT_OUT
from lab.models.options import ModelOptions


@dataclass
class AnalysisOptions(ModelOptions):
    """Options shared by the analysis experiments."""

    cache_dir: str = field(default=DEFAULT_CACHE_DIR, metadata={"help": "activation cache folder"})
    out: str = field(default=DEFAULT_OUT, metadata={"help": "output folder (tables, figures, directions)"})
    seed: int = field(default=0, metadata={"help": "split and bootstrap seed"})
    test_fraction: float = field(default=0.25, metadata={"help": "held-out share (split by example id)"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap replicates for CIs"})
    limit: int = field(default=0, metadata={"help": "use only the first N items per class (0: all)"})
    storage: StorageDtype = field(default=ANALYSIS_STORAGE, metadata={"help": "activation cache storage dtype"})
