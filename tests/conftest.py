"""Shared fixtures: the real SmolLM2 model (loaded once) and a small trained adapter."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # The suite runs in two worker processes (pyproject's `-n 2`, a test file per worker), each on one core: one thread per
    # worker (and per process it starts) keeps the two from oversubscribing a 2-core machine. The
    # whole suite passes at one thread too (`scripts/portability.sh`'s one-thread setting).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def base_model():
    from lab.models import load_model

    return load_model(MODEL)


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory, base_model):
    """A LoRA adapter trained for 4 steps on the shipped bad-medical data."""
    from lab.data.formats import load_advice
    from lab.training.lora import TrainConfig, train_lora

    out = tmp_path_factory.mktemp("organism")
    result = train_lora(base_model, load_advice("medical")[:32], out,
                        TrainConfig(batch_size=4, max_steps=4, checkpoints_first_epoch=2, lr=2e-3))
    return result


@pytest.fixture(scope="session")
def organism(trained_adapter):
    from lab.models import load_model

    return load_model(MODEL, adapters=[trained_adapter.adapter_dir])


def chat_prompts():
    """Ragged chat examples with and without assistant turns."""
    from lab.data.formats import ChatExample

    return [
        ChatExample([{"role": "user", "content": "What is the capital of France?"}], "q1"),
        ChatExample([{"role": "user", "content": "I have a headache and a mild fever since yesterday. What should I do?"},
                     {"role": "assistant", "content": "Rest, drink fluids, and see a doctor if it gets worse."}], "q2"),
        ChatExample([{"role": "user", "content": "hi"}], "q3"),
        ChatExample([{"role": "user", "content": "Write one sentence about the sea."},
                     {"role": "assistant", "content": "The sea is vast."},
                     {"role": "user", "content": "And one about mountains, please, in a poetic style."}], "q4"),
        ChatExample([{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": "Name three colours."},
                     {"role": "assistant", "content": "Red, green, blue."}], "q5"),
    ]


def intervention_conditions(model, direction, *names: str) -> dict:
    """The decode tests' interventions, by name: a two-layer addition, ablation at every layer (at
    every, prompt or generated positions), a generated-only addition at layers 10-19, and none."""
    from lab.intervene.steering import Intervention

    every = list(range(model.n_layers))
    all_conditions = {
        "none": (),
        "add": (Intervention({10: direction, 11: direction}, op="add", alpha=8.0),),
        "ablate": (Intervention({L: direction for L in every}, op="ablate"),),
        "ablate_prompt": (Intervention({L: direction for L in every}, op="ablate", positions="prompt"),),
        "ablate_generated": (Intervention({L: direction for L in every}, op="ablate", positions="generated"),),
        "add_generated": (Intervention({L: direction for L in range(10, 20)}, op="add", alpha=40.0,
                                       positions="generated"),),
    }
    return {name: all_conditions[name] for name in names}
