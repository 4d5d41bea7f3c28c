"""Optimizer and RNG state of a training checkpoint, without pickle.

`torch.save` / `torch.load(weights_only=False)` would unpickle whatever a checkpoint folder
holds, so a crafted folder could run code on resume. Here tensors go to safetensors (a
plain tensor container) and everything else to JSON; a reload rebuilds exactly the dicts
`optimizer.load_state_dict` expects. emlab <= 0.2 wrote `trainer_state.pt`: such folders are
refused, never loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lab.core.errors import BadInput

STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
LEGACY_STATE = "trainer_state.pt"  # pickled by emlab <= 0.2: never loaded



def save_trainer_state(folder: Path, step: int, losses: list[float], optimizer_state: dict,
                       torch_rng: torch.Tensor, config: dict, grad_norms: list[float] = ()) -> None:
    """Write optimizer + RNG state as safetensors (tensors) and JSON (everything else).

    An optimizer state dict is `{"state": {param_index: {name: tensor}}, "param_groups":
    [{hyper-parameters..., "params": [indices]}]}`: tensors go to `state.<index>.<name>`,
    the rest to JSON. Only plain numbers, strings, lists and None are accepted in the JSON
    part, so a reload builds exactly the dicts `optimizer.load_state_dict` expects.
    """
    from safetensors.torch import save_file

    tensors = {"torch_rng": torch_rng.contiguous()}
    plain_state: dict[str, dict] = {}
    for index, entries in optimizer_state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                plain_state.setdefault(str(index), {})[name] = _plain(value)
    save_file(tensors, str(folder / STATE_TENSORS))
    meta = {"format": "emlab-trainer-state-v1", "step": step, "losses": losses, "grad_norms": list(grad_norms),
            "config": _plain(config),
            "param_groups": _plain(optimizer_state["param_groups"]), "plain_state": plain_state}
    (folder / STATE_JSON).write_text(json.dumps(meta, allow_nan=True))


def load_trainer_state(folder: Path) -> dict:
    """Read what `save_trainer_state` wrote: {"step", "losses", "grad_norms", "config", "optimizer", "torch_rng"}."""
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / STATE_JSON).read_text())
        tensors = load_file(str(folder / STATE_TENSORS))
    except (OSError, ValueError) as exc:
        raise BadInput(f"{folder}: unreadable trainer state ({exc})") from None
    if meta.get("format") != "emlab-trainer-state-v1":
        raise BadInput(f"{folder}: unknown trainer state format {meta.get('format')!r}")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entries in meta["plain_state"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"step": int(meta["step"]), "losses": list(meta["losses"]), "grad_norms": list(meta.get("grad_norms", [])),
            "config": meta["config"],
            "optimizer": {"state": state, "param_groups": meta["param_groups"]}, "torch_rng": tensors["torch_rng"]}


def _plain(value):
    """JSON-safe copy of optimizer hyper-parameters: tuples become lists; anything exotic is refused."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in trainer state JSON")
