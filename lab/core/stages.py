"""A tiny content-keyed stage runner: a stage's result is a JSON file named by the hash of
its inputs, so a rerun skips every stage whose inputs are unchanged, a crash resumes at the
first unfinished stage, and changing one setting recomputes only what depends on it.
Two runs that reach the same stage at once take turns on its lock (`lab.core.io.key_lock`):
the second waits, then reuses the first one's result.

    result = stages.run("eval-base", {"model": fp, "config": cfg}, lambda: evaluate(...))

A stage whose result is a typed record (`lab.core.records.Record`) passes its class as `codec`:
the file holds `codec.to_json(result)` and the stage returns `codec.from_json(...)` of it, on the
first run as on every rerun.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lab import __version__
from lab.core.io import key_lock, sha256_json, write_json_atomic

_MISSING = object()


@dataclass
class Stages:
    folder: Path
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def path(self, name: str, inputs: dict) -> Path:
        key = sha256_json({"inputs": inputs, "emlab": __version__})
        return Path(self.folder) / f"{name}-{key[:16]}.json"

    def run(self, name: str, inputs: dict, compute: Callable[[], Any], outputs: Callable[[Any], list] | None = None,
            codec: Any = None) -> Any:
        """Return the stored result for these inputs, or compute, store and return it.

        `outputs(result)` lists files the result refers to; if any is gone, the stage reruns.
        `codec` (a class with `to_json` / `from_json`): how a typed result is stored and read back.
        """
        path = self.path(name, inputs)
        if (result := self._stored(path, outputs, codec)) is not _MISSING:
            self.reused.append(name)
            return result
        with key_lock(path.with_name(path.name + ".lock")):
            if (result := self._stored(path, outputs, codec)) is not _MISSING:  # another run finished it meanwhile
                self.reused.append(name)
                return result
            start = time.perf_counter()
            result = compute()
            self.seconds[name] = time.perf_counter() - start
            stored = result.to_json() if codec is not None else result
            write_json_atomic(path, {"stage": name, "inputs": inputs, "result": stored, "seconds": self.seconds[name]})
        self.ran.append(name)
        result = json.loads(path.read_text())["result"]  # exactly what a rerun will read
        return codec.from_json(result) if codec is not None else result

    @staticmethod
    def _stored(path: Path, outputs: Callable[[Any], list] | None, codec: Any = None) -> Any:
        """The stored result, or _MISSING if there is none or a file it refers to is gone."""
        if not path.exists():
            return _MISSING
        result = json.loads(path.read_text())["result"]
        result = codec.from_json(result) if codec is not None else result
        return result if outputs is None or all(Path(p).exists() for p in outputs(result)) else _MISSING
