"""LoRA training: schedule, determinism, resume (in-process and a real SIGKILL)."""

import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from lab.data import load_advice
from lab.errors import BadInput
from lab.train import TrainConfig, checkpoint_steps, train_lora
from tests.conftest import REPO


def test_checkpoint_schedule():
    assert checkpoint_steps(40, 1, 4) == [10, 20, 30, 40]
    assert checkpoint_steps(40, 3, 4) == [10, 20, 30, 40, 80, 120]
    assert checkpoint_steps(7, 2, 3) == [2, 5, 7, 14]


def _weights(path):
    return load_file(str(path / "adapter_model.safetensors"))


def test_same_seed_same_adapter_and_resume_is_identical(tmp_path, base_model):
    data = load_advice("financial")[:24]
    config = TrainConfig(batch_size=4, checkpoints_first_epoch=2, max_steps=4, lr=2e-3)
    a = train_lora(base_model, data, tmp_path / "a", config)
    b = train_lora(base_model, data, tmp_path / "b", config)
    wa, wb = _weights(a.adapter_dir), _weights(b.adapter_dir)
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    # interrupted run: stop at step 2, then continue to 4 from the checkpoint
    half = train_lora(base_model, data, tmp_path / "c", TrainConfig(**{**config.__dict__, "max_steps": 2}))
    assert half.steps == 2
    rest = train_lora(base_model, data, tmp_path / "c", config)
    assert rest.resumed_from == 2 and rest.steps == 4
    wc = _weights(rest.adapter_dir)
    assert all((wa[k] == wc[k]).all() for k in wa)
    # a different seed gives a different adapter
    d = train_lora(base_model, data, tmp_path / "d", TrainConfig(**{**config.__dict__, "seed": 1}))
    assert any((wa[k] != _weights(d.adapter_dir)[k]).any() for k in wa)


def test_rank1_down_proj_organism(tmp_path, base_model):
    res = train_lora(base_model, load_advice("medical")[:8], tmp_path,
                     TrainConfig(rank1_down_proj_layer=12, batch_size=4, max_steps=1))
    keys = list(_weights(res.adapter_dir))
    assert keys and all("layers.12.mlp.down_proj" in k for k in keys)
    assert any(_weights(res.adapter_dir)[k].shape[0] == 1 for k in keys if "lora_A" in k)


def test_training_config_errors(tmp_path, base_model):
    with pytest.raises(BadInput, match="unknown target modules"):
        train_lora(base_model, load_advice("medical")[:4], tmp_path, TrainConfig(target_modules=("nope",)))
    with pytest.raises(BadInput, match="empty training set"):
        train_lora(base_model, [], tmp_path, TrainConfig())


@pytest.mark.slow
def test_cli_train_one_epoch_killed_and_resumed(tmp_path):
    """`emlab train` on the shipped bad-medical data, 1 epoch; SIGKILL mid-way, rerun resumes."""
    out = tmp_path / "organism"
    cmd = [sys.executable, "-m", "experiments.cli", "train", "--data", "medical", "--out", str(out), "--epochs", "1"]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first = out / "checkpoints" / "step-000010" / "trainer_state.json"
    deadline = time.time() + 600
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
    assert first.exists(), "no first checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "adapter").exists()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from step" in done.stdout
    names = sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("."))
    assert names == ["step-000010", "step-000020", "step-000030", "step-000040"]
    assert (out / "adapter" / "adapter_model.safetensors").exists()
