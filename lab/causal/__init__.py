"""Causal tests: steering and ablation of directions, each beside matched random controls.

A direction found by a probe is only a correlate until editing it changes behaviour more than
an edit of the same shape along a random direction does. Each test is a config (its verb's
command line) and a typed result:

- `controls`: `SteeringOptions` (the `--allow-foreign-direction` option) and `default_layers`.
- `steer`: `SteerConfig`, `SteerRow`, `SteerResult` (`run_steering` picks by target):
  `refusal.refusal_validation` (Arditi et al.: the refusal direction ablated and added) and
  `em_steering.em_addition` (an organism's misalignment direction added to the base model).
- `refusal`: refusal rates and a judge-free refusal log-odds under interventions.
- `ablation`: `ablate_em` -> `AblationResult`: own, transferred and random directions ablated.
- `preventative`: organisms trained with the misalignment direction added (`preventative_steering`).
- `mo_direction`: a direction from an organism's own judged answers, ablated and added, judged.

Getting started::

    from lab.causal import SteerConfig, run_steering

    result = run_steering(SteerConfig(target="refusal"))
    result.rows[1].logodds_shift          # Estimate: the refusal direction ablated at every layer

Modules: `controls`, `steer`, `refusal`, `em_steering`, `ablation`, `preventative`, `mo_direction`.
"""

from lab.core.lazy import face_names, lazy_face

FACE = {
    "controls": "SteeringOptions default_layers",
    "steer": "SteerConfig RefusalSteerConfig EmSteerConfig SteerRow LayerSelection SteerResult run_steering",
    "refusal": "REFUSAL_REPLY COMPLY_REPLY refusal_under refusal_logodds_under select_by_ablation refusal_validation",
    "em_steering": "em_addition",
    "ablation": "AblationConfig AblationRow AblationResult ablate_em",
    "preventative": "PreventativeConfig preventative_steering",
    "mo_direction": "MoDirectionConfig MoDirectionResult mo_direction_table",
}
__all__ = face_names(FACE)
__getattr__, __dir__ = lazy_face(__name__, FACE)
