"""A tiny content-keyed stage runner: a stage's result is a JSON file named by the hash of
its inputs, so a rerun skips every stage whose inputs are unchanged, a crash resumes at the
first unfinished stage, and changing one setting recomputes only what depends on it.

    result = stages.run("eval-base", {"model": fp, "config": cfg}, lambda: evaluate(...))
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lab import __version__
from lab.io import sha256_json, write_json_atomic


@dataclass
class Stages:
    folder: Path
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def path(self, name: str, inputs: dict) -> Path:
        key = sha256_json({"inputs": inputs, "emlab": __version__})
        return Path(self.folder) / f"{name}-{key[:16]}.json"

    def run(self, name: str, inputs: dict, compute: Callable[[], Any], outputs: Callable[[Any], list] | None = None) -> Any:
        """Return the stored result for these inputs, or compute, store and return it.

        `outputs(result)` lists files the result refers to; if any is gone, the stage reruns.
        """
        path = self.path(name, inputs)
        if path.exists():
            result = json.loads(path.read_text())["result"]
            if outputs is None or all(Path(p).exists() for p in outputs(result)):
                self.reused.append(name)
                return result
        start = time.perf_counter()
        result = compute()
        self.seconds[name] = time.perf_counter() - start
        write_json_atomic(path, {"stage": name, "inputs": inputs, "result": result, "seconds": self.seconds[name]})
        self.ran.append(name)
        return json.loads(path.read_text())["result"]  # exactly what a rerun will read
