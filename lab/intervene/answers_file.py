"""Answers files (JSONL, one row per answer) that survive a killed writer and end in a fixed order.

Rows are appended as they are produced, so a killed run keeps what it finished; the last line
may then be cut short, which `read_rows` skips and `open_for_append` removes before appending.
`settle` puts a job's rows into its plan order at the end, so a run that produced rows out of
order (continuous batching, a resume) ends with the file an uninterrupted static run writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO


def read_rows(path: str | Path | None) -> list[dict]:
    """The rows of a JSONL answers file (missing: none); a last line cut short by a killed writer is not a row."""
    if path is None or not Path(path).exists():
        return []
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
    return [json.loads(line) for line in lines]


def open_for_append(path: str | Path) -> IO[str]:
    """`path` opened for appending rows, after dropping a last line cut short by a killed writer."""
    if Path(path).exists():
        with open(path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    return open(path, "a", encoding="utf-8")


def settle(path: str | Path, settings_hash: str, position: dict[tuple[str, int], int]) -> None:
    """Rewrite `path` (atomically) so the rows of `settings_hash` follow `position` ((id, sample) ->
    rank); they take the places their rows had, other lines keep theirs. A no-op when in order."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    mine = [(n, json.loads(line)) for n, line in enumerate(lines)]
    mine = [(n, r) for n, r in mine if r.get("settings_hash") == settings_hash]
    want = sorted(mine, key=lambda nr: position.get((nr[1]["id"], nr[1]["sample"]), len(position)))
    if [n for n, _ in want] == [n for n, _ in mine]:
        return
    places = iter(n for n, _ in mine)
    order = {next(places): n for n, _ in want}  # the k-th of the job's places gets the k-th wanted row
    tmp = Path(path).with_name(f".tmp-{Path(path).name}-{os.getpid()}")
    tmp.write_text("".join(lines[order.get(n, n)] + "\n" for n in range(len(lines))), encoding="utf-8")
    os.replace(tmp, path)
