"""EM across training: judge-free scores at every checkpoint of an organism (base model = step 0).

    python -m experiments.em_trajectory --run runs/medical --domain medical

Per checkpoint, paired against the base model with bootstrap CIs: the in-domain gap on the
held-out advice questions (harmful - aligned answer log-prob), and the general style-matched
gaps (usual and terse styles) on questions outside the training domain (`lab.diffing.checkpoints`).
"""

from __future__ import annotations

from experiments.common import cli, show
from lab.core.console import progress
from lab.core.io import write_result
from lab.diffing.checkpoints import TrajectoryConfig, TrajectoryResult, trajectory
from lab.reports.figures import write_figures


def run(cfg: TrajectoryConfig) -> TrajectoryResult:
    with progress() as bar:
        task = bar.add_task("checkpoints", total=None, info="")
        result = trajectory(cfg, on_step=lambda: bar.advance(task))
    write_figures(result)
    show(result)
    write_result(result)
    return result


main = cli(TrajectoryConfig, run)


if __name__ == "__main__":
    main()
