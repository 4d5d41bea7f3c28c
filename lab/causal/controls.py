"""What every causal test shares: the option to apply foreign directions, and the layers it steers.

The controls themselves live where they are made: random directions of the same structure
(`lab.intervene.steering.random_like`, `random_vectors_like`), the coherence guard
(`lab.intervene.logprobs.coherence_change`) and the strength unit
(`lab.directions.norms.prompt_residual_norm`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SteeringOptions:
    """The option of the verbs that apply directions to a model (steer, ablate); a verb that applies
    none does not offer it, rather than ignore it."""

    allow_foreign_direction: bool = field(default=False, metadata={
        "help": "apply a direction to a model it was not fitted for (other base weights, d_model or depth)"})


def default_layers(best: int, n_layers: int, window: int = 2) -> list[int]:
    """The layers a sweep steers by default: best - window, best, best + window (clipped to the model)."""
    return sorted({max(0, best - window), best, min(n_layers - 1, best + window)})
