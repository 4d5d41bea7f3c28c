"""EM evaluation of one model (base or organism): answers, code-mode and refusal rates, judged EM.

    python -m experiments.em_eval --questions general --samples 2
    python -m experiments.em_eval --questions ../shared/data/em-questions/first_plot_questions.yaml \\
        --judge-base-url http://127.0.0.1:8765/v1 --judge-model smollm2

Without a judge, only judge-free numbers are reported (no internet here: no strong judge).

Over several GPUs, one process per GPU (rank r samples on cuda:r; the answers file has a single
process's rows, order and seeds, and its text when every process runs the same kernels; rank 0
scores, judges and reports):

    torchrun --standalone --nproc-per-node 2 -m experiments.em_eval --device cuda --samples 50
"""

from __future__ import annotations

from pathlib import Path

from experiments.common import cli
from lab.core.console import console, progress, table
from lab.core.io import write_summary
from lab.em.answers import EvalResult
from lab.em.model_eval import EvalConfig, evaluate_model, prepare_eval


def run(cfg: EvalConfig) -> EvalResult | None:
    setup = prepare_eval(cfg)  # bad input fails in one line, before the progress bar
    ranks = setup.ranks
    with progress() as bar:
        task = bar.add_task(f"answers (rank {ranks.rank} of {ranks.world})" if ranks.world > 1 else "answers",
                            total=None, info="")
        done = evaluate_model(cfg, on_batch=lambda d, t: bar.update(task, completed=d, total=t, info=""), setup=setup)
    if done is None:  # another rank's share: rank 0 reports
        return None
    r = done.result
    write_summary(done.out, cfg, answer_seconds=done.answer_seconds, ranks=done.ranks, **r.to_json())
    lines = [{"measure": measure, "value [95% CI]": str(est), "n": est.n}
             for measure, est in (("code-mode rate", r.code_mode_rate), ("refusal rate", r.refusal_rate))]
    for name, em in r.em.items():
        lines.append({"measure": f"EM rate ({name})", "value [95% CI]": str(em.estimate),
                      "n": f"{em.estimate.n} counted, {em.n_unscored} unscored"})
    adapters = f"+ {','.join(Path(a).name for a in cfg.adapters)}" if cfg.adapters else ""
    console.print(table(f"EM evaluation: {r.model} {adapters} ({done.n_questions} questions x {cfg.samples} samples)",
                        lines))
    if not r.em:
        console.print("[yellow]no judge configured: judged EM rates not computed (see --judge-base-url)[/]")
    console.print(f"answers: {done.out / 'answers.jsonl'}")
    return r


main = cli(EvalConfig, run)


if __name__ == "__main__":
    main()
