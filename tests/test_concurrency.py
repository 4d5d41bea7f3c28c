"""Several runs on one cache folder at once: builders of one key take turns, stale locks do not block."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

from lab.data.formats import load_contrast, write_chat_jsonl
from tests.conftest import REPO

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}

HOLD = """
import sys, time
from pathlib import Path
from lab.core.io import key_lock
with key_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""

TRY = """
import sys, time
from pathlib import Path
from lab.core.io import key_lock
start = time.time()
with key_lock(Path(sys.argv[1])):
    print(round(time.time() - start, 2), flush=True)
"""


def _datasets(path):
    out = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _build(folder, data):
    return subprocess.Popen([sys.executable, "-m", "experiments.cli", "cache", "build", "--data", str(data),
                             "--layers", "1", "4", "--storage", "float16", "--forward-batch-size", "4", "--cache-dir",
                             str(folder)],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_concurrent_builds_of_one_key_all_succeed_with_one_file(tmp_path):
    data = tmp_path / "prompts.jsonl"
    write_chat_jsonl(load_contrast("refusal")[:40], data)
    shared = tmp_path / "shared"
    procs = []
    for _ in range(3):
        procs.append(_build(shared, data))
        time.sleep(1.0)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n---\n".join(o[-1500:] for o in outs)
    files = sorted(p.name for p in shared.iterdir())
    assert len(files) == 1 and files[0].endswith(".h5"), files  # no partial, sidecar or lock left behind
    serial = _build(tmp_path / "serial", data)
    assert serial.communicate(timeout=600)[0] and serial.returncode == 0
    a, b = _datasets(shared / files[0]), _datasets(tmp_path / "serial" / files[0])
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _holder(lock):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_waits_for_holder_and_dies_with_it(tmp_path):
    lock = tmp_path / "k.lock"
    stale = _holder(lock)
    stale.send_signal(signal.SIGKILL)  # no cleanup runs: the lock file stays behind
    stale.wait()
    assert lock.exists()
    late = subprocess.run([sys.executable, "-c", TRY, str(lock)], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=60)  # a stale lock file blocks nobody
    assert late.returncode == 0 and not lock.exists()

    holder = _holder(lock)
    waiter = subprocess.Popen([sys.executable, "-c", TRY, str(lock)], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                              text=True)
    time.sleep(2.0)
    assert waiter.poll() is None  # blocked while the holder lives
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    waiter.communicate(timeout=60)
    assert waiter.returncode == 0 and not lock.exists()


STAGE = """
import sys, time
from pathlib import Path
from lab.core.stages import Stages

def compute():
    with open(sys.argv[2], "a") as f:
        f.write("ran\\n")
    time.sleep(2)
    return {"value": 41 + 1}

stages = Stages(Path(sys.argv[1]))
print(stages.run("slow", {"x": 1}, compute)["value"], stages.ran, stages.reused, flush=True)
"""


def test_concurrent_study_stages_run_once(tmp_path):
    log = tmp_path / "computed.log"
    procs = [subprocess.Popen([sys.executable, "-c", STAGE, str(tmp_path / "stages"), str(log)], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-800:] for o in outs]
    assert log.read_text().count("ran") == 1
    assert sorted(o[0].split()[0] for o in outs) == ["42"] * 3
    assert sorted(json.loads(p.read_text())["result"]["value"] for p in (tmp_path / "stages").glob("*.json")) == [42]
