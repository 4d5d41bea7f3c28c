"""Causal tests: steering and ablation of directions, each beside matched random controls.

A direction found by a probe is only a correlate until editing it changes behaviour more than
an edit of the same shape along a random direction does. This package holds those tests:

- `controls`: `SteeringOptions` (the `--allow-foreign-direction` option) and `default_layers`.
- `refusal`: refusal rates and a judge-free refusal log-odds under interventions.

Modules: `controls`, `refusal`.
"""

from lab.core.lazy import face_names, lazy_face

FACE = {
    "controls": "SteeringOptions default_layers",
    "refusal": "REFUSAL_REPLY COMPLY_REPLY refusal_under refusal_logodds_under",
}
__all__ = face_names(FACE)
__getattr__, __dir__ = lazy_face(__name__, FACE)
