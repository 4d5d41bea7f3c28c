"""Small file helpers shared by every stage: exact JSON, hashing and atomic publication."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path, PurePath
from typing import Any, Iterator

import numpy as np

CHUNK = 1 << 20


def json_default(obj: Any) -> Any:
    """`json.dumps(default=...)` that keeps numbers numbers and refuses what it cannot write exactly.

    numpy scalars and arrays become the Python values they hold (`np.int64(3)` -> `3`,
    `np.float32` -> float, `np.bool_` -> bool), paths become strings, dataclasses their
    `to_json()` or fields. Anything else is an error: `default=str` would silently have
    written `np.int64(3)` as `"3"`, a string every later comparison treats as text.
    """
    if isinstance(obj, (np.generic, np.ndarray)) and obj.dtype.kind in "biuf":
        return obj.item() if obj.ndim == 0 else obj.tolist()
    if isinstance(obj, PurePath):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        to_json = getattr(obj, "to_json", None)
        return to_json() if callable(to_json) else dataclasses.asdict(obj)
    raise TypeError(f"cannot write {type(obj).__module__}.{type(obj).__qualname__} as JSON exactly: {obj!r:.80}")


def dumps(obj: Any, **kwargs: Any) -> str:
    """`json.dumps` with `json_default`: the one JSON writer every emlab file goes through."""
    return json.dumps(obj, default=json_default, **kwargs)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-serialisable object with sorted keys (stable across runs)."""
    text = dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def emlab_home() -> Path:
    """Root of emlab's persistent state (model store, judge cache). `EMLAB_HOME` overrides."""
    return Path(os.environ.get("EMLAB_HOME", Path.home() / ".cache" / "emlab"))


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to `final` only if the block succeeds.

    Readers therefore never see a half-written folder, and a crash leaves only a
    `.tmp-*` folder that the next attempt ignores.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def key_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a `.lock` file beside what it guards) for the block.

    Concurrent builders of one key run one after another: the second waits here, then finds
    the first one's finished file and reuses it. `fcntl.flock` belongs to the open file, so
    the kernel drops it when its holder exits or is killed: a stale lock cannot block anyone.
    The file is removed on release; a waiter that then wakes on the removed file's inode
    sees that it no longer is the file at `path` and locks afresh.
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # we locked a file the previous holder had already removed
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def write_rows(rows: list[dict], path: Path) -> Path:
    """Write result rows as CSV (for people) and JSON (for code), atomically."""
    import csv
    import io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path.with_suffix(".csv"))
    write_json_atomic(path.with_suffix(".json"), rows)
    return path.with_suffix(".csv")


def out_folder(root: str | Path, name: str) -> Path:
    """`<root>/<name>`, created: where one analysis writes its files."""
    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_summary(out: Path, cfg: Any, **fields: Any) -> dict:
    """Write an analysis's `summary.json` (its config, then its results, then `out`) and return it."""
    from lab.core.config import config_dict

    summary = {"config": config_dict(cfg), **fields, "out": str(out)}
    write_json_atomic(out / "summary.json", summary)
    return summary


def stored_summary(out: Path, cfg: Any) -> dict | None:
    """The `summary.json` an earlier run of exactly this config wrote into `out`, or None.

    For analyses whose results are not all in content-keyed caches: a rerun of the same config
    returns what is stored and loads no model; any changed setting runs the analysis again.
    """
    from lab.core.config import config_dict

    path = out / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("config") == json.loads(json.dumps(config_dict(cfg))) else None


RESULTS_SCHEMA = 2  # the format of typed results on disk (results.json, summary.json): lab.core.records


def write_result(result: Any, path: Path | None = None) -> Path:
    """Write a typed result (`lab.core.records.Record`) as `{"schema": 2, ...its fields}`, by default to
    `<result.out>/summary.json`."""
    path = Path(path) if path is not None else Path(result.out) / "summary.json"
    write_json_atomic(path, {"schema": RESULTS_SCHEMA, **result.to_json()})
    return path


def read_result(codec: Any, path: Path) -> Any:
    """A typed result written by `write_result` (one `BadInput` line for another schema)."""
    from lab.core.errors import BadInput

    data = json.loads(Path(path).read_text())
    if data.get("schema") != RESULTS_SCHEMA:
        raise BadInput(f"{path}: written by emlab <= 0.2 (schema {data.get('schema', 1)}, not {RESULTS_SCHEMA}): "
                       f"run the verb again; its cached stages are reused")
    return codec.from_json({k: v for k, v in data.items() if k != "schema"})
