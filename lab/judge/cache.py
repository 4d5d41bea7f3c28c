"""The judge's persistent cache: finished verdicts in sqlite, safe for concurrent processes.

Several emlab processes (a study, an eval, a validation) may judge at once into the same
`judge_cache.sqlite`. sqlite serialises writers with a file lock; what breaks naive use is
*waiting* for it: a writer that finds the lock taken gets "database is locked" at once
unless a busy timeout is set, and switching to WAL mode or creating the table while another
process does the same can fail the same way. So every statement here runs with a busy
timeout (sqlite waits and retries internally) inside a bounded retry loop of our own (for
the few places sqlite does not wait, such as the WAL switch), and every write is its own
short transaction (`INSERT OR REPLACE` of one verdict): two processes writing the same key
write the same verdict, and the last one wins harmlessly.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from lab.core.errors import CacheError
from lab.core.io import sha256_json
from lab.judge.schemes import JudgeScore

T = TypeVar("T")
BUSY_TIMEOUT_MS = 30_000  # sqlite's own wait for a lock, per statement
LOCK_RETRIES = 20  # then ours, around it, with jittered sleeps


def _locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class JudgeCache:
    """A sqlite table of finished scores keyed by sha256(judge model, scheme, prompt).

    Only judge *verdicts* are stored (a value, or None with a numeric reason such as
    "low_numeric_mass"); transport failures are not, so the next run retries them.
    Every row is committed at once, so an interrupted run resumes where it stopped.
    """

    SCHEMA = """CREATE TABLE IF NOT EXISTS scores (
        key TEXT PRIMARY KEY, judge_model TEXT NOT NULL, scheme TEXT NOT NULL,
        value REAL, reason TEXT, numeric_mass REAL NOT NULL, top_logprobs TEXT NOT NULL,
        created_at REAL NOT NULL)"""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit; each write below is one explicit short transaction
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._retry(lambda: self.conn.execute("PRAGMA journal_mode=WAL"))  # readers never block the writer
            self._retry(lambda: self.conn.execute(self.SCHEMA))
        except (sqlite3.DatabaseError, OSError) as exc:
            raise CacheError(f"{self.path}: cannot open judge cache ({exc})") from None

    def _retry(self, statement: Callable[[], T]) -> T:
        """Run `statement`, retrying while another process holds the lock (bounded, jittered)."""
        for attempt in range(LOCK_RETRIES):
            try:
                return statement()
            except sqlite3.OperationalError as exc:
                if not _locked(exc) or attempt == LOCK_RETRIES - 1:
                    raise
                time.sleep(min(1.0, 0.01 * 2 ** attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    @staticmethod
    def key(judge_model: str, scheme: str, prompt: str) -> str:
        return sha256_json(["emlab-judge-v1", judge_model, scheme, prompt])

    def get(self, key: str) -> JudgeScore | None:
        row = self._retry(lambda: self.conn.execute(
            "SELECT value, reason, numeric_mass, scheme FROM scores WHERE key = ?", (key,)).fetchone())
        return None if row is None else JudgeScore(row[0], row[1], row[2], row[3])

    def put(self, key: str, judge_model: str, score: JudgeScore, top_logprobs: Mapping[str, float]) -> None:
        row = (key, judge_model, score.scheme, score.value, score.reason, score.numeric_mass,
               json.dumps(dict(top_logprobs), sort_keys=True), time.time())
        try:
            self._retry(lambda: self.conn.execute("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row))
        except sqlite3.DatabaseError as exc:
            raise CacheError(f"{self.path}: cannot write judge cache ({exc})") from None

    def __len__(self) -> int:
        return self._retry(lambda: self.conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    def close(self) -> None:
        self.conn.close()


class _NoCache:
    """Stand-in when caching is disabled."""

    def get(self, key: str) -> None:
        return None

    def put(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass
