"""The judge cache under concurrent processes."""

import multiprocessing as mp
import sqlite3

import pytest

from lab.judge import JudgeCache, JudgeScore


def _writer(path: str, worker: int, n: int, start, out) -> None:
    """Open the cache at the same moment as the others, then write and read back `n` verdicts."""
    try:
        start.wait(timeout=60)
        cache = JudgeCache(path)  # every worker creates / switches to WAL at once
        for i in range(n):
            key = f"k{(i + worker * n // 2) % (2 * n)}"  # half of each worker's keys overlap a neighbour's
            value = float(int(key[1:]))
            cache.put(key, "judge", JudgeScore(value, None, 1.0, "digit10"), {"7": -0.1})
            got = cache.get(key)
            assert got is not None and got.value == value
        cache.close()
        out.put((worker, "ok"))
    except Exception as exc:  # noqa: BLE001 — reported to the parent, which fails the test
        out.put((worker, f"{type(exc).__name__}: {exc}"))


@pytest.mark.parametrize("workers", [6])
def test_concurrent_processes_write_one_cache(tmp_path, workers):
    ctx = mp.get_context("spawn")
    path = str(tmp_path / "judge_cache.sqlite")
    start, out, n = ctx.Barrier(workers), ctx.Queue(), 40
    procs = [ctx.Process(target=_writer, args=(path, w, n, start, out)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    results = dict(out.get(timeout=5) for _ in procs)
    assert results == {w: "ok" for w in range(workers)}, results
    assert all(p.exitcode == 0 for p in procs)
    cache = JudgeCache(path)
    expected = {f"k{(i + w * n // 2) % (2 * n)}" for w in range(workers) for i in range(n)}
    assert len(cache) == len(expected)
    assert all(cache.get(k).value == float(int(k[1:])) for k in expected)
    assert cache.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cache.close()


def test_writer_waits_for_a_held_lock(tmp_path):
    """A write while another connection holds the write lock waits for it instead of failing."""
    import threading

    path = tmp_path / "judge_cache.sqlite"
    JudgeCache(path).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # take the write lock, as a concurrent writer would
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()
    cache = JudgeCache(path)
    cache.put("k", "judge", JudgeScore(50.0, None, 1.0, "digit10"), {})
    release.join()
    assert cache.get("k").value == 50.0
    cache.close()
    holder.close()
