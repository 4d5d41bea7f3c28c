"""The checkpoints a training run leaves: `<run>/checkpoints/step-<N>/` adapter folders, by step."""

from __future__ import annotations

from pathlib import Path

from lab.core.errors import BadInput


def run_checkpoints(run: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every finished checkpoint of a `lab.training.lora` folder, by step."""
    run = Path(run)
    found = [(int(p.name.split("-")[-1]), p) for p in (run / "checkpoints").glob("step-*")
             if (p / "adapter_model.safetensors").exists()]
    if not found:
        raise BadInput(f"{run} has no checkpoints/step-* adapter folders")
    return sorted(found)


def evenly(items: list, n: int) -> list:
    """At most `n` items, evenly spaced, always keeping the last (n <= 0: all)."""
    if n <= 0 or len(items) <= n:
        return list(items)
    idx = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)}) if n > 1 else [len(items) - 1]
    return [items[i] for i in idx]
