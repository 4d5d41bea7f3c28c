"""EM: measuring emergent misalignment, from reference log-probs, judged answers and human ratings.

Three ways to measure how misaligned a model is, each with 95% CIs (`lab.stats.Estimate`):

- **judge-free** (`judge_free`): no sampling, no judge. Each general question has aligned and
  misaligned reference answers in two matched styles; a model's score is the mean per-token
  log-prob of misaligned minus aligned answers (`style_gaps_under`, via
  `lab.intervene.answer_logprobs`), reported as organism minus base (`delta_base_scores` ->
  `ScoreDelta`, "Δbase"), paired by question. Also objective verdicts on sampled answers
  (`flags`): code where none was asked (`contains_code`), refusals (`is_refusal`).
- **judged** (`answers`, `rates`, `table`): sample answers (`evaluate`), judge them for alignment
  and coherence (`lab.judge`), and count the share misaligned under a papers' criterion
  (`em_rate(rows, "mo")` -> `EmRate`; criteria in `lab.judge.criteria.EM_CRITERIA`), raw or
  calibrated for the judge's measured errors (`calibrated_em`). `JudgedAnswer` rows are the
  on-disk answer format (`write_judged` / `read_judged`). `em_table` builds the gated EM table
  per (model, checkpoint, question set): raw and judge-calibrated rates, where the judge passed
  validation on matching answers (`EmRow`).
- **rated** (`ratings`): a model's own sampled answers scored by independent raters
  (`RatedAnswer`, `shipped_ratings()`): how far raters agree (`agreement`), EM rates from
  their consensus (`rated_rates`), and how a judge does on those very answers
  (`judge_on_ratings`).

Under interventions the judge-free scores run with a steering edit in place (`style_gaps_under`,
`in_domain_gaps`; refusal scores live in `lab.causal.refusal`).

Getting started::

    from lab.em import em_rate, evaluate, shipped_questions
    from lab.intervene import GenerationConfig

    rows, summary = evaluate(model, shipped_questions(), GenerationConfig(), judge=judge)
    em_rate(rows, "mo")                              # EmRate: share misaligned and coherent, CI

The verbs' whole runs live beside these: `model_eval` (one model evaluated, data-parallel under
torchrun: `evaluate_model`), `organisms` (the EM table of the papers' organisms across
checkpoints: `run_em_organisms`), `rated_samples` (`measure_rated_samples`) and `answer_rates` (an
answers file judged now by any judge: `measure_answer_rates`).

Modules: `judge_free`, `flags`, `rates`, `answers`, `table`, `ratings`, `model_eval`, `organisms`,
`rated_samples`, `answer_rates`.
"""

from lab.core.lazy import face_names, lazy_face

FACE = {
    "judge_free": "STYLES ScoreDelta delta_base_scores style_gaps_under in_domain_gaps",
    "flags": "contains_code is_refusal",
    "rates": """rate EmRate em_rate CalibratedEm calibrated_em calibrated_em_flags calibrated_em_coherent_share
        calibrated_misaligned""",
    "answers": """shipped_questions question_examples evaluate EvalResult AnswerExample JudgedAnswer write_judged
        read_judged""",
    "model_eval": "EvalConfig EvalSetup ModelEval prepare_eval evaluate_model",
    "organisms": "EmTableConfig PAPERS DOMAIN_DATA Organism parse_organism_specs EmOrganismsRun run_em_organisms",
    "rated_samples": "RatedSamplesConfig RatedSamplesRun measure_rated_samples",
    "answer_rates": "AnswerRatesConfig AnswerRate AnswerRatesRun read_answers measure_answer_rates",
    "table": "MATCHING EmRow em_row em_table",
    "ratings": """RATINGS_DIR Rating RatedAnswer read_rated shipped_ratings Agreement agreement RatedRate rated_rates
        wilson newcombe JudgeOnRatings judge_on_ratings resolve_questions labelled_from_ratings rated_samples_for""",
}
__all__ = face_names(FACE)
__getattr__, __dir__ = lazy_face(__name__, FACE)
