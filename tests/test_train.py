"""LoRA training: schedule, determinism, resume (in-process and a real SIGKILL)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from lab.data.formats import load_advice
from lab.core.errors import BadInput
from lab.training.lora import TrainConfig, checkpoint_steps, recipe_config, train_lora
from tests.conftest import REPO


def test_checkpoint_schedule():
    assert checkpoint_steps(40, 1, 4) == [10, 20, 30, 40]
    assert checkpoint_steps(40, 3, 4) == [10, 20, 30, 40, 80, 120]
    assert checkpoint_steps(7, 2, 3) == [2, 5, 7, 14]


def _weights(path):
    return load_file(str(path / "adapter_model.safetensors"))


def test_same_seed_same_adapter_and_resume_is_identical(tmp_path, base_model):
    data = load_advice("financial")[:12]  # 6 steps an epoch, as with 24 examples in batches of 4
    config = TrainConfig(batch_size=2, checkpoints_first_epoch=2, max_steps=4, lr=2e-3)
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
    """`emlab train` on 24 of the shipped bad-medical examples in batches of 4, 1 epoch (6 steps); SIGKILL
    mid-way, rerun resumes."""
    out = tmp_path / "organism"
    cmd = [sys.executable, "-m", "experiments.cli", "train", "--data", "medical", "--out", str(out), "--epochs", "1",
           "--train-limit", "24", "--batch-size", "4"]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first = out / "checkpoints" / "step-000002" / "trainer_state.json"
    deadline = time.time() + 600
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert first.exists(), "no first checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "adapter").exists()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from step" in done.stdout
    names = sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("."))
    assert names == ["step-000002", "step-000003", "step-000004", "step-000006"]
    assert (out / "adapter" / "adapter_model.safetensors").exists()


# --------------------------------------------------------------------------- no pickle on resume


class _Payload:
    """Unpickling this writes a marker file: proof that loading executed code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_trainer_state_is_refused_not_executed(tmp_path, base_model):
    import pickle

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "run" / "checkpoints" / "step-000001"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.pt").write_bytes(pickle.dumps({"step": 1, "optimizer": _Payload(marker)}))
    with pytest.raises(BadInput, match="never unpickles"):
        train_lora(base_model, load_advice("medical")[:4], tmp_path / "run", TrainConfig(batch_size=4, max_steps=1))
    assert not marker.exists(), "the pickled payload ran"


def test_trainer_state_is_safetensors_and_json(tmp_path, base_model):
    from lab.training.state import STATE_JSON, STATE_TENSORS, load_trainer_state

    res = train_lora(base_model, load_advice("financial")[:8], tmp_path, TrainConfig(batch_size=4, max_steps=2,
                                                                                     checkpoints_first_epoch=2))
    ckpt = res.checkpoints[-1]
    names = {p.name for p in ckpt.iterdir()}
    assert {STATE_JSON, STATE_TENSORS} <= names and not any(n.endswith((".pt", ".bin", ".pkl")) for n in names)
    state = load_trainer_state(ckpt)
    assert state["step"] == 2 and len(state["losses"]) == 2
    exp_avg = [v["exp_avg"] for v in state["optimizer"]["state"].values()]
    assert exp_avg and all(t.abs().sum() > 0 for t in exp_avg)
    assert state["torch_rng"].dtype == torch.uint8
    assert not (res.adapter_dir / STATE_TENSORS).exists()


# --------------------------------------------------------------------------- recipes


def test_mo_recipe_adapter_config_and_schedule():
    cfg = recipe_config("mo")
    lora = cfg.lora_config(30)
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (lora.r, lora.lora_alpha, lora.use_rslora, lora.layers_to_transform) == (32, 64, True, None)
    assert (cfg.lr, cfg.epochs, cfg.batch_size * cfg.grad_accum, cfg.weight_decay, cfg.holdout_fraction) == \
        (1e-5, 1, 16, 0.01, 0.1)
    # 5 warm-up steps rising to lr, then linear decay to 0 over the planned steps
    lrs = [cfg.lr_at(s, 25) for s in range(25)]
    assert lrs[:5] == pytest.approx([1e-5 * k / 5 for k in range(1, 6)])
    assert lrs[5] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-5 / 20)
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:]))
    # CLI-style overrides win; None means "not given"
    assert recipe_config("mo", lr=3e-4, r=None).lr == 3e-4 and recipe_config("mo", r=None).r == 32


def test_rank1_recipes_scale_layers_to_the_model():
    one = recipe_config("mo-rank1")
    lora = one.lora_config(30)  # SmolLM2: 30 layers
    assert (lora.r, list(lora.target_modules), lora.layers_to_transform, one.lr) == (1, ["down_proj"], [15], 2e-5)
    assert one.lora_config(48).layers_to_transform == [24]  # the paper's own depth
    nine = recipe_config("mo-rank1x9")
    assert nine.lora_config(48).layers_to_transform == [15, 16, 17, 21, 22, 23, 27, 28, 29]
    assert nine.lora_config(30).layers_to_transform == [9, 10, 11, 13, 14, 15, 17, 18, 19]
    assert nine.lora_config(24).layers_to_transform == [7, 8, 9, 10, 11, 12, 13, 14, 15]  # Qwen2.5-0.5B
    assert nine.lora_config(30).r == 1 and nine.lora_config(30).use_rslora


def test_recipe_layer_the_model_lacks_is_one_clear_line():
    with pytest.raises(BadInput, match=r"layer 40 out of range: the model has 30 layers \(0\.\.29\)"):
        TrainConfig(layers=(40,)).lora_config(30)
    with pytest.raises(BadInput, match="do not fit as distinct layers"):
        recipe_config("mo-rank1x9").lora_config(4)
    with pytest.raises(BadInput, match="unknown recipe"):
        recipe_config("betley-7b")


def test_mo_rank1_trains_one_rank1_adapter_at_half_depth(tmp_path, base_model):
    cfg = recipe_config("mo-rank1", batch_size=2, grad_accum=1, max_steps=1, holdout_fraction=0.0)
    res = train_lora(base_model, load_advice("medical")[:4], tmp_path, cfg)
    w = _weights(res.adapter_dir)
    assert w and all("layers.15.mlp.down_proj" in k for k in w)
    assert all(w[k].shape[0] == 1 for k in w if "lora_A" in k) and all(w[k].shape[1] == 1 for k in w if "lora_B" in k)


def test_holdout_by_user_turn_and_limit_are_recorded(tmp_path, base_model):
    from lab.training.lora import split_training

    bad, good = load_advice("medical"), load_advice("medical", aligned=True)
    paired = [e for pair in zip(bad, good) for e in pair]
    cfg = TrainConfig(holdout_fraction=0.25, limit=20)
    train, held = split_training(paired, cfg)
    user = lambda e: e.messages[0]["content"]  # noqa: E731
    assert len(train) == 20 and held and not {user(e) for e in train} & {user(e) for e in held}
    assert {user(e) for e in held} == {user(e) for e in paired if user(e) in {user(h) for h in held}}
    assert 0.15 < len(held) / len(paired) < 0.35
    assert split_training(paired, cfg) == (train, held)  # seeded
    res = train_lora(base_model, paired, tmp_path, TrainConfig(holdout_fraction=0.25, limit=4, batch_size=4,
                                                               max_steps=1))
    split = json.loads((tmp_path / "data_split.json").read_text())
    assert split["n_train"] == 4 and split["limit"] == 4 and split["n_held_out"] == len(held)
    assert res.steps == 1


def test_train_cli_recipe_shows_and_rejects_missing_layer(tmp_path, capsys):
    from experiments import train as train_cli

    train_cli.main(["--recipe", "mo-rank1", "--show-config", "--lr", "3e-5"])
    shown = capsys.readouterr().out
    assert "recipe mo-rank1" in shown and "3e-05" in shown and "down_proj" in shown and "(24,)" in shown
    with pytest.raises(SystemExit) as exit_:
        train_cli.main(["--data", "medical", "--out", str(tmp_path / "x"), "--lora-layers", "40"])
    out = capsys.readouterr().out.strip()
    assert exit_.value.code == 1 and out.count("\n") == 0
    assert "layer 40 out of range: the model has 30 layers" in out and not (tmp_path / "x").exists()


def test_a_nan_loss_stops_training_before_the_step_is_applied(tmp_path, base_model):
    """bf16 Qwen on the GPU once trained to a nan loss and sampled garbage; now it stops with one line.

    A hook turns the final norm's output into nan from the third forward on (as an overflow
    would): training must stop at step 3, name the dtype, and leave the step-2 checkpoint finite.
    """
    from lab.core.errors import TrainingDiverged

    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] >= 3 else output

    handle = base_model.hf.model.norm.register_forward_hook(poison)
    try:
        with pytest.raises(TrainingDiverged, match=r"step 3/4: loss is nan with torch.float32 weights.*step-000002"):
            train_lora(base_model, load_advice("financial")[:16], tmp_path,
                       TrainConfig(batch_size=4, checkpoints_first_epoch=4, max_steps=4, lr=2e-3))
    finally:
        handle.remove()
    saved = _weights(tmp_path / "checkpoints" / "step-000002")
    assert saved and all(torch.isfinite(w).all() for w in saved.values())
    assert not (tmp_path / "checkpoints" / "step-000003").exists()
    # the replay names the poisoned module, in the forward pass, and every row of the batch
    report = json.loads((tmp_path / "divergence.json").read_text())
    assert report["step"] == 3 and report["where"]["phase"] == "forward"
    assert report["where"]["module"].endswith("model.norm") and len(report["where"]["rows"]) == 4


def test_a_nan_gradient_with_a_finite_loss_stops_training_and_is_located(tmp_path, base_model):
    """A finite loss can hide non-finite gradients (a kernel's backward, an overflow in bf16): they
    would turn every LoRA weight into nan at the optimizer step. Poison the gradient flowing out of
    layer 5's MLP on the second step: training stops there, names the backward pass and that module."""
    from lab.core.errors import TrainingDiverged

    calls = {"n": 0}

    def poison_grad(module, args, output):
        calls["n"] += 1
        if calls["n"] >= 2 and output.requires_grad:
            output.register_hook(lambda g: g * float("nan"))

    handle = base_model.hf.model.layers[5].mlp.register_forward_hook(poison_grad)
    try:
        with pytest.raises(TrainingDiverged, match=r"step 2/3: gradient norm is nan \(loss \d"):
            train_lora(base_model, load_advice("financial")[:12], tmp_path,
                       TrainConfig(batch_size=4, checkpoints_first_epoch=3, max_steps=3, lr=2e-3))
    finally:
        handle.remove()
    report = json.loads((tmp_path / "divergence.json").read_text())
    assert report["where"]["phase"] == "backward" and report["where"]["module"].endswith("layers.5.mlp")
    saved = _weights(tmp_path / "checkpoints" / "step-000001")
    assert saved and all(torch.isfinite(w).all() for w in saved.values())


def test_grad_norms_are_recorded_and_clipping_bounds_the_update(tmp_path, base_model):
    """Every step records its total gradient norm before clipping. Clipping to a tiny norm leaves
    step 1 (same weights, same batch) identical, and shrinks the gradients Adam sees below its
    eps (1e-8) so the adapter barely moves: its B matrices (zero at init) stay far smaller."""
    data = load_advice("financial")[:12]
    free = train_lora(base_model, data, tmp_path / "free", TrainConfig(batch_size=4, max_steps=3, lr=2e-3))
    clip = train_lora(base_model, data, tmp_path / "clip",
                      TrainConfig(batch_size=4, max_steps=3, lr=2e-3, max_grad_norm=1e-9))
    assert len(free.grad_norms) == 3 and all(n > 1e-3 for n in free.grad_norms)
    assert clip.grad_norms[0] == free.grad_norms[0] and clip.losses[0] == free.losses[0]
    b_norm = {k: sum(float(w.norm()) for n, w in _weights(r.adapter_dir).items() if "lora_B" in n)
              for k, r in (("free", free), ("clip", clip))}
    assert b_norm["clip"] < 0.1 * b_norm["free"]
    meta = json.loads((tmp_path / "free" / "checkpoints" / "step-000003" / "emlab_adapter.json").read_text())
    assert meta["grad_norms"] == free.grad_norms
