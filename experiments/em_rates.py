"""`emlab em-rates`: EM rates with 95% CIs from answers, sampled and judged, or rated by people.

    emlab em-rates --questions general --samples 2                               # --source sample (the default)
    emlab em-rates --questions ../shared/data/em-questions/first_plot_questions.yaml \\
        --judge-base-url http://127.0.0.1:8765/v1 --judge-model smollm2
    emlab em-rates --source ratings                                              # every shipped ratings file
    emlab em-rates --source ratings --fit-judges embedding activation
    emlab em-rates --source answers --answers runs/em-table/answers.jsonl --judge-base-url http://127.0.0.1:8765/v1

`--source` picks the job, and the options listed by `--help` are the chosen job's:
- `sample` (`lab.em.model_eval`): one model (base or organism) answers the questions; code-mode and
  refusal rates, and judged EM rates with an LLM judge (`--judge-base-url`; without one, only
  judge-free numbers are reported). Over several GPUs, one process per GPU (rank r samples on
  cuda:r; the answers file has a single process's rows, order and seeds; rank 0 scores, judges
  and reports):

      torchrun --standalone --nproc-per-node 2 -m experiments.em_rates --device cuda --samples 50

- `ratings` (`lab.em.rated_samples`): per ratings file, rater agreement, consensus EM / misaligned
  / coherent rates with each organism's change from the base model, the sampling run's own judge
  against the consensus, and judges fitted on half of the rated questions, validated on the other
  half (`--apply-to`: their calibrated rates on em-organisms answers files). Writes
  `<out>/rated_samples.md` / `.json`, `<out>/<model>.rates.png` and `<out>/<model>.labels.jsonl`.
- `answers` (`lab.em.answer_rates`): an answers file already sampled (em-organisms' or em-rates'),
  judged now by an LLM judge (`--judge llm`, every papers' criterion) or by the best saved validated
  judge (`--judge validated`, calibrated rates); one rate per organism, checkpoint and question set.
  Writes `<out>/em_rates_answers/<answers folder>/summary.json` and `em_rates.md`.
"""

from __future__ import annotations

from pathlib import Path

from experiments.common import routed
from experiments.verbs import VERBS
from lab.core.console import console, progress, table
from lab.core.io import write_json_atomic, write_summary
from lab.em.answer_rates import AnswerRatesConfig, measure_answer_rates
from lab.em.answers import EvalResult
from lab.em.model_eval import EvalConfig, evaluate_model, prepare_eval
from lab.em.rated_samples import RatedSamplesConfig, measure_rated_samples
from lab.reports.markdown import markdown_table


def run_sampled(cfg: EvalConfig) -> EvalResult | None:
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


def run_ratings(cfg: RatedSamplesConfig) -> dict[str, list[dict]]:
    r = measure_rated_samples(cfg, say=console.print)
    out = Path(cfg.out)
    for model, rates in r.rates.items():
        console.print(f"figure: {rates_figure(out / f'{model}.rates.png', model, rates)}")
    for name, rows in r.tables.items():
        if rows:
            console.print(table(name, rows))
    md = sum((_markdown(t, rows) for t, rows in r.tables.items()), ["# EM on rated samples", ""])
    out.mkdir(parents=True, exist_ok=True)
    (out / "rated_samples.md").write_text("\n".join(md))
    write_json_atomic(out / "rated_samples.json", {"config": vars(cfg), **r.tables})
    return r.tables


def run_answers(cfg: AnswerRatesConfig) -> list:
    r = measure_answer_rates(cfg, say=console.print)
    rows = [{"organism": x.organism, "step": x.step, "set": x.set, "n": x.n, "judge": x.judge,
             "criterion": x.criterion, "EM rate [95% CI]": str(x.rate) if x.rate is not None else "", "note": x.note}
            for x in r.rows]
    console.print(table(f"EM rates of {cfg.answers} ({cfg.judge} judge)", rows))
    r.out.mkdir(parents=True, exist_ok=True)
    (r.out / "em_rates.md").write_text("\n".join(_markdown(f"EM rates of {cfg.answers}", rows)))
    write_summary(r.out, cfg, rates=[{"organism": x.organism, "step": x.step, "set": x.set, "n": x.n,
                                      "judge": x.judge, "criterion": x.criterion, "note": x.note,
                                      "rate": x.rate.to_json() if x.rate is not None else None} for x in r.rows])
    console.print(f"rates: {r.out / 'summary.json'}")
    return r.rows


def rates_figure(path: Path, model: str, rates: list) -> Path:
    """EM, misaligned and coherent shares (consensus) per source x set, with 95% CIs."""
    from lab.reports.plots import grouped_bars_with_ci

    rows = sorted(rates, key=lambda r: (r.set, r.source != "base", r.source))
    names = [f"{r.source} | {r.set}" for r in rows]
    series = {label: ([getattr(r, key).value for r in rows], [getattr(r, key).lo for r in rows],
                      [getattr(r, key).hi for r in rows])
              for label, key in (("EM (misaligned and coherent)", "em"), ("misaligned (aligned <= 30)", "misaligned"),
                                 ("coherent (> 50)", "coherent"))}
    return grouped_bars_with_ci(names, series, path, f"{model}: rated samples (2 raters' consensus)", "share of answers")


def _markdown(title: str, rows: list[dict]) -> list[str]:
    return [f"## {title}", "", *markdown_table(rows), ""] if rows else []


DESCRIPTION = VERBS["em-rates"].help  # the routed verb's own first line
main = routed("--source", {"sample": (EvalConfig, run_sampled), "ratings": (RatedSamplesConfig, run_ratings),
                          "answers": (AnswerRatesConfig, run_answers)}, DESCRIPTION, __name__)

if __name__ == "__main__":
    main()
