"""The model options every verb shares: which model, which adapters, where and at what dtype.

A verb's config subclasses `ModelOptions` (or `lab.directions.options.AnalysisOptions`), so
`--model --adapters --device --dtype --device-map` mean one thing in every verb:

    cfg.view()                    # the LabModel of --model + --adapters (weights load on first use)
    cfg.view(["runs/medical/adapter"])   # the same base with other adapters, sharing its weights
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

from lab.core.config import Config
from lab.core.errors import BadInput
from lab.models.store import DEFAULT_MODEL

if TYPE_CHECKING:
    from lab.models.lab_model import LabModel
    from lab.models.pool import ModelPool

Device = str  # cpu, cuda, cuda:N or auto: checked when the model is placed (one line if the GPU is missing)
ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass
class ModelOptions(Config):
    """The model a verb runs: a base model plus LoRA adapters, its placement and compute dtype."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "registered model, HF folder or hub id"})
    adapters: list[str] = field(default_factory=list, metadata={
        "help": "PEFT adapter folder(s) merged in order into the model analysed (verbs that take their models "
                "from --organisms or --run refuse it)"})
    device: Device = field(default="cpu", metadata={"help": "where the model runs: cpu, cuda, cuda:N or auto"})
    dtype: ModelDtype = field(default="auto", metadata={"help": "compute dtype (auto: bfloat16 on cuda, float32 on cpu)"})
    device_map: str = field(default="", metadata={"help": "spread the model over GPUs: auto or cuda:0,cuda:1"})

    def view(self, adapters: Sequence[str | Path] | None = None, pool: "ModelPool | None" = None) -> "LabModel":
        """The model of these options (with `adapters` instead of `--adapters` if given).

        Weights load on first use, into `pool` or the pool the caller opened (the CLI opens one
        per command; the study one per run), so every view of one base shares one copy.
        """
        from lab.models.lab_model import LabModel

        return LabModel(self.model, self.adapters if adapters is None else adapters, dtype=self.dtype,
                        device=self.device, device_map=self.device_map, pool=pool)

    def refuse_adapters(self, models_from: str) -> None:
        """Refuse `--adapters` in a verb whose models come from its own flags, rather than ignore it."""
        if self.adapters:
            raise BadInput(f"--adapters is not used here: the models come from {models_from}")
