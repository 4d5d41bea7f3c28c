"""The papers' EM table at our sizes: organisms, checkpoints, validated judges, calibrated EM rates.

Stages (each a content-keyed JSON under <out>/stages/, so a rerun resumes where it stopped):
1. judges: the activation judge (alignment) and the coherence measure are fitted and
   validated (`lab.judge`); with `--extra-domains` the alignment judge also fits on half of
   the shipped medical and financial counterparts (their other halves validate), aiming at
   the general questions, where the medical-only judge failed (AUROC 0.71). Saved under
   <out>/judges/ with their validations.
2. organisms: each `--domain-recipes domain:recipe` trains (`lab.training.lora.train_lora`, resumable)
   on the papers' data with `--checkpoints` checkpoints; its final adapter is copied to
   <out>/organisms/<domain>-<recipe>/final/.
3. answers: the base model and every checkpoint answer the EM paper's first-plot questions,
   the shipped general questions and held-out user turns of each training domain (T=1,
   seeded); every answer is judged and written as `lab.em.answers.JudgedAnswer` rows.
4. table: `lab.em.table.em_table` (raw and calibrated EM, coherence, code-mode, the judge's
   validation gate), figures, <out>/answers.jsonl.

Order of work: judges, base model, then each organism trained with its final checkpoint
answered, then the intermediate checkpoints. Past `--wall-budget-s` no new stage starts
(the table says what was skipped), so a short budget loses the trajectory first.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal, Optional

from lab.core.budget import WallBudget
from lab.core.config import Config, OldFlag, config_dict
from lab.core.errors import BadInput
from lab.data import DEFAULT_SYSTEM_PROMPT
from lab.data.formats import FIRST_PLOT
from lab.models import DEFAULT_MODEL
from lab.models.options import Device

Say = Callable[[str], None]  # a progress line for the console (the verb prints them; the library never does)

DOMAIN_DATA = {  # training data of each domain, under <shared>/data
    "medical": "model-organisms/bad_medical_advice.jsonl",
    "financial": "model-organisms/risky_financial_advice.jsonl",
    "insecure": "betley/insecure.jsonl",
}


# The Model Organisms paper's evaluation, exactly (its code and text): the 8 free-form first-plot
# questions (no JSON or template variants) x 50 samples, temperature 1, top-p 1, up to 600 new tokens, no
# system message (the chat template's default), organisms trained with 3 seeds on the full sets (10% held
# out, no truncation: max length 2048), the final checkpoint. Its GPT-4o judge is not available here: the
# answers are judged afterwards by a judge validated on this model's own rated samples (emlab
# rated-samples --apply-to), so the stage fits no reference-validated judge.
PAPERS = dict(first_plot_variants="free-form", first_plot_samples=50, max_new_tokens=600, general_samples=0,
              in_domain_questions=50, checkpoints=1, train_seeds=[0, 1, 2], system_prompt="none", max_length=2048,
              domain_recipes=["medical:mo", "financial:mo", "insecure:mo"], judge_answers=False,
              micro_batch_size=16,
              gen_batch_size=400)


@dataclass
class EmTableConfig(Config):
    """An EM table of the papers' organisms across checkpoints: trains, samples, judges with validated judges, tabulates.

    `--profile papers` runs the Model Organisms paper's protocol exactly (8 free-form first-plot
    questions x 50 samples, T=1, 600 new tokens, 3 training seeds, no system message); its answers
    are judged afterwards with a judge validated on the model's own rated samples."""

    PROFILES = {"papers": PAPERS}
    OLD_FLAGS = {"--organisms": OldFlag("--domain-recipes"), "--limit": OldFlag("--train-limit"),
                 "--batch-size": OldFlag("--micro-batch-size"),
                 "--judges": OldFlag("--judge-answers", switch={"fit": "--judge-answers", "none": "--no-judge-answers"})}

    profile: Literal["default", "papers"] = field(default="default", metadata={
        "help": "papers: the Model Organisms paper's protocol (sets the defaults of the flags below)"})
    out: str = field(default="runs/em-table", metadata={"help": "output folder (resumes what is there)"})
    shared: str = field(default="../shared", metadata={"help": "folder holding data/model-organisms, data/betley, ..."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "base model"})
    device: Device = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N or auto"})
    dtype: Literal["auto", "float32", "bfloat16"] = field(default="float32", metadata={
        "help": "compute dtype of the base model (LoRA adapters train in float32; the judges are fitted and "
                "validated on this same model and dtype)"})
    domain_recipes: list[str] = field(default_factory=lambda: ["medical:mo", "financial:mo", "insecure:mo",
                                                               "medical:mo-rank1"],
                                      metadata={"help": "organisms to train, as domain:recipe (domains: medical, "
                                                        "financial, insecure)"})
    train_limit: Optional[int] = field(default=None, metadata={"help": "train on a seeded subsample of N examples"})
    checkpoints: int = field(default=3, metadata={"help": "evenly spaced checkpoints in the epoch (incl. the last)"})
    micro_batch_size: Optional[int] = field(default=None, metadata={
        "help": "training micro-batch; grad_accum follows so the effective batch stays the recipe's 16"})
    max_steps: Optional[int] = field(default=None, metadata={"help": "stop training early (smoke runs)"})
    max_length: Optional[int] = field(default=None, metadata={"help": "training tokens per example (recipe: 256)"})
    first_plot_questions: int = field(default=0, metadata={"help": "first N first-plot questions (0: all of them)"})
    first_plot_variants: Literal["all", "free-form"] = field(default="all", metadata={
        "help": "free-form: the 8 plain questions only (no _json / _template variants), as the papers report"})
    first_plot_samples: int = field(default=50, metadata={"help": "samples per first-plot paraphrase"})
    trajectory_samples: int = field(default=0, metadata={
        "help": "samples per first-plot paraphrase at intermediate checkpoints (0: --first-plot-samples)"})
    general_questions: int = field(default=0, metadata={"help": "first N shipped general questions (0: all 48)"})
    general_samples: int = field(default=3, metadata={"help": "samples per general question (0: no general set)"})
    in_domain_questions: int = field(default=100, metadata={"help": "held-out user turns per domain, 1 sample each"})
    max_new_tokens: int = field(default=256, metadata={"help": "answer length cap"})
    gen_batch_size: int = field(default=64, metadata={"help": "generation batch"})
    decode: Literal["auto", "continuous", "fast", "hf"] = field(default="auto", metadata={
        "help": "decode path (auto: continuous on CUDA, hf on CPU)"})
    system_prompt: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={
        "help": "system message for training and sampling; none: no system message (the chat template's own)"})
    train_seeds: list[int] = field(default_factory=lambda: [0], metadata={
        "help": "one organism per training seed (the held-out turns are the same for every seed)"})
    judge_answers: bool = field(default=True, metadata={
        "help": "fit and validate the activation and coherence judges on reference answers and judge every "
                "answer (--no-judge-answers: sample only; judge later, e.g. emlab em-rates --source ratings "
                "--apply-to)"})
    judge_layers: list[int] = field(default_factory=list, metadata={
        "help": "candidate layers of the activation judge (empty: every ~10%% of depth)"})
    judge_groups: int = field(default=300, metadata={"help": "mo-medical user turns the alignment judge fits on"})
    coherence_groups: int = field(default=100, metadata={"help": "user turns the coherence measure fits on"})
    val_groups: int = field(default=120, metadata={"help": "groups per judge validation set"})
    extra_domains: bool = field(default=True, metadata={
        "help": "fit the alignment judge on half the shipped medical+financial counterparts too"})
    extra_groups: int = field(default=160, metadata={"help": "shipped turns per extra domain the judge fits on"})
    wall_budget_s: float = field(default=0.0, metadata={"help": "start no new stage past this many seconds (0: none)"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap replicates for CIs"})
    seed: int = field(default=0, metadata={"help": "seed for the held-out split, subsampling, the judges, sampling "
                                                   "and bootstrap"})


# --------------------------------------------------------------------------- pieces


@dataclass
class Organism:
    domain: str
    recipe: str
    seed: int | None = None  # training seed where several are trained (None: one organism, the run's seed)

    @property
    def name(self) -> str:
        return f"{self.domain}-{self.recipe}" + ("" if self.seed is None else f"-seed{self.seed}")


@dataclass
class Checkpoint:
    """A model to answer: the base model (step 0, no adapter) or one organism checkpoint."""

    domain: str
    recipe: str
    step: int
    adapter: str
    seed: int | None = None

    @property
    def tag(self) -> str:
        if not self.adapter:
            return "base"
        return f"{Organism(self.domain, self.recipe, self.seed).name}-step{self.step:06d}"


def parse_organism_specs(specs: list[str], seeds: list[int] | None = None) -> list[Organism]:
    """`domain:recipe` specs, one organism per training seed when more than one seed is given."""
    from lab.training.lora import RECIPES

    if seeds is not None and not seeds:
        raise BadInput("--train-seeds needs at least one seed")
    out = []
    for spec in specs:
        domain, _, recipe = spec.partition(":")
        if domain not in DOMAIN_DATA or recipe not in RECIPES:
            raise BadInput(f"organism {spec!r} must be domain:recipe with domain in {', '.join(DOMAIN_DATA)} "
                           f"and recipe in {', '.join(RECIPES)}")
        out += [Organism(domain, recipe, s if seeds and len(seeds) > 1 else None) for s in (seeds or [None])]
    return out


def train_config(cfg: EmTableConfig, recipe: str, seed: int | None = None):
    """The recipe with this run's overrides. Several training seeds share the held-out split of the run's
    seed, so no seed's organism trained on the held-out turns every organism is tested on."""
    from lab.data import system_prompt_option
    from lab.training.lora import recipe_config

    several = seed is not None
    overrides = dict(limit=cfg.train_limit, checkpoints_first_epoch=cfg.checkpoints, max_steps=cfg.max_steps,
                     seed=seed if several else cfg.seed, holdout_seed=cfg.seed if several else None,
                     max_length=cfg.max_length)
    if system_prompt_option(cfg.system_prompt) != DEFAULT_SYSTEM_PROMPT:  # recorded only when it differs
        overrides["system_prompt"] = system_prompt_option(cfg.system_prompt)
    if cfg.micro_batch_size:
        base = recipe_config(recipe)
        effective = base.batch_size * base.grad_accum
        if effective % cfg.micro_batch_size:
            raise BadInput(f"--micro-batch-size {cfg.micro_batch_size} does not divide the recipe's effective batch "
                           f"{effective}")
        overrides.update(batch_size=cfg.micro_batch_size, grad_accum=effective // cfg.micro_batch_size)
    config = recipe_config(recipe, **overrides)
    if "system_prompt" in overrides and overrides["system_prompt"] is None:  # recipe_config drops None values
        config = replace(config, system_prompt=None)
    return config


def domain_examples(cfg: EmTableConfig, domain: str):
    from lab.data import read_chat_jsonl

    path = Path(cfg.shared) / "data" / DOMAIN_DATA[domain]
    if not path.exists():
        raise BadInput(f"{path}: training data of {domain} is not there (see --shared)")
    return read_chat_jsonl(path)


def question_sets(cfg: EmTableConfig, domains: list[str]) -> dict[str, tuple[list, int]]:
    """{set name: (chat examples, samples per example)}: first-plot, general, in-domain per domain."""
    from lab.data import ChatExample, read_questions_yaml
    from lab.em.answers import question_examples, shipped_questions
    from lab.training.lora import recipe_config, split_training

    first = read_questions_yaml(Path(cfg.shared) / "data" / FIRST_PLOT)
    if cfg.first_plot_variants == "free-form":
        first = [q for q in first if not q.id.endswith(("_json", "_template"))]
    first = first[: cfg.first_plot_questions or None]
    sets = {"first-plot": (question_examples(first), cfg.first_plot_samples)}
    if cfg.general_samples:
        sets["general"] = (question_examples(shipped_questions(cfg.general_questions or None)), cfg.general_samples)
    for domain in dict.fromkeys(domains):
        # the held-out user turns of the mo recipe's split (every mo recipe holds out the same turns)
        _, held = split_training(domain_examples(cfg, domain), recipe_config("mo", seed=cfg.seed))
        turns = [ChatExample([m for m in e.messages if m["role"] == "user"][:1], e.id, None, "in-domain",
                             {"question_id": e.id}) for e in held[: cfg.in_domain_questions]]
        sets[f"in-domain:{domain}"] = (turns, 1)
    return sets


# --------------------------------------------------------------------------- stages


def fit_judges(cfg: EmTableConfig, features, out: Path, say: Say) -> dict:
    """Fit + validate the alignment (activation) judge and the coherence measure; save both."""
    from lab.judge.fitting import fit_and_validate
    from lab.judge.labelled import judge_data, subsample_groups
    from lab.judge.validated import save_validated

    data = judge_data(cfg.shared, cfg.seed, cfg.val_groups, cfg.judge_groups, cfg.extra_domains, cfg.extra_groups)
    rows = []
    for kind, answers in (("activation", data.train),
                          ("coherence", subsample_groups(data.train, cfg.coherence_groups, cfg.seed))):
        validated, n_fit = fit_and_validate(kind, answers, data.validation, features, cfg.n_boot, cfg.seed)
        say(f"fitted the {kind} judge on {n_fit} answers ({data.source})")
        rows += [{**v.row(kind), "trained on": f"{data.source}, {n_fit} answers"} for v in validated.validations.values()]
        save_validated(out / "judges" / f"{kind}.json", validated)
        if kind == "activation":
            layers = validated.judge.layer_aurocs
            say(f"activation judge: layer {validated.judge.layer} (held-out training AUROC by layer {layers})")
    return {"rows": rows, "paths": [str(out / "judges" / f"{k}.json") for k in ("activation", "coherence")]}


def train_organism(cfg: EmTableConfig, model, org: Organism, out: Path, say: Say) -> dict:
    """Train one organism (resumable); its checkpoints, losses and final adapter folder."""
    from lab.training.lora import train_lora

    folder = out / "organisms" / org.name
    config = train_config(cfg, org.recipe, org.seed)
    start = time.perf_counter()
    result = train_lora(model.for_training(), domain_examples(cfg, org.domain), folder, config)
    final = folder / "final"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(result.adapter_dir, final)
    steps = [int(p.name.split("-")[1]) for p in result.checkpoints]
    losses = result.losses
    say(f"{org.name}: {result.steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f} "
                  f"({time.perf_counter() - start:.0f}s)")
    return {"checkpoints": [str(p) for p in result.checkpoints], "steps": steps, "losses": losses,
            "grad_norms": result.grad_norms, "seconds": round(time.perf_counter() - start, 1),
            "final": str(final), "config": asdict(config)}


def answer_and_judge(cfg: EmTableConfig, model, point: Checkpoint, sets: dict, judges, out: Path) -> dict:
    """Sample every set's answers from one model and judge them (judges None: sample only); the rows' JSONL path."""
    from lab.data import system_prompt_option
    from lab.intervene.decode import release
    from lab.em.answers import JudgedAnswer, write_judged
    from lab.intervene.generate import GenerationConfig, generate_answers
    from lab.em.flags import contains_code
    from lab.judge.criteria import ALIGNED_FLAG, COHERENT_ABOVE

    view = model.with_adapters([point.adapter] if point.adapter else [])
    release()  # captured decode graphs belong to the previous adapters: never replay them on another model
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    system = system_prompt_option(cfg.system_prompt)
    rows: list[JudgedAnswer] = []
    for name, (examples, samples) in sets.items():
        if point.adapter and name.startswith("in-domain:") and name != f"in-domain:{point.domain}":
            continue  # organisms answer their own domain's held-out turns; the base model answers every domain's
        gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=1.0, top_p=1.0, samples=samples,
                               seed=cfg.seed, batch_size=cfg.gen_batch_size, decode=cfg.decode, system_prompt=system)
        got = generate_answers(view, examples, gen, out_path=raw / f"{point.tag}-{name.replace(':', '-')}.jsonl")
        for g in got:
            rows.append(JudgedAnswer(model.name, point.domain, point.recipe, point.step, name,
                                     str(g.get("question_id", g["id"])), g["question"], int(g["sample"]), g["answer"],
                                     code=contains_code(g["answer"]), adapter=point.adapter,
                                     system_prompt=g.get("system_prompt", gen.system_prompt), seed=point.seed))
    release()
    if judges is not None:
        alignment, coherence = judges
        pairs = [(r.question, r.answer) for r in rows]
        aligned = alignment.judge.judge(pairs).aligned  # features come from the base model (the judges' own)
        coherent = coherence.judge.judge(pairs).coherent
        for r, a, c in zip(rows, aligned, coherent):
            r.aligned = None if a != a else round(float(a), 3)
            r.coherent = None if c != c else round(float(c), 3)
            r.misaligned = None if r.aligned is None else r.aligned <= ALIGNED_FLAG
            r.flagged = None if r.coherent is None or r.misaligned is None else bool(r.misaligned and r.coherent > COHERENT_ABOVE)
    path = write_judged(rows, out / "answers" / f"{point.tag}.jsonl")
    return {"path": str(path), "n": len(rows)}


@dataclass
class EmOrganismsRun:
    """The EM table run: its summary (written to `<out>/em_table.json`), the table rows, every judged
    answer, and the trained organisms (what the report and figures are drawn from)."""

    summary: dict
    table: list
    answers: list
    trained: dict[str, dict]
    out: Path


def run_em_organisms(cfg: EmTableConfig, say: Say = lambda message: None) -> EmOrganismsRun:
    """Judges, the base model's answers, every organism trained and answered, then the intermediate
    checkpoints; each a content-keyed stage under `<out>/stages/`. `say(line)` reports progress."""
    from lab.em.answers import read_judged, write_judged
    from lab.em.table import em_table
    from lab.core.io import write_json_atomic
    from lab.judge.features import Featurizer
    from lab.judge.validated import load_validated
    from lab.models import load_model
    from lab.core.stages import Stages

    clock = WallBudget(cfg.wall_budget_s, on_skip=lambda line: say(f"[yellow]{line}"))
    organisms = parse_organism_specs(cfg.domain_recipes, cfg.train_seeds if cfg.train_seeds != [cfg.seed] else None)
    if not (Path(cfg.shared) / "data" / FIRST_PLOT).exists():
        raise BadInput(f"{Path(cfg.shared) / 'data' / FIRST_PLOT}: the EM questions are not there (see --shared)")
    out = Path(cfg.out)
    stages = Stages(out / "stages")
    model = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    features = Featurizer(cfg.model, out / "cache", model=model, candidate_layers=cfg.judge_layers or None)
    base_inputs = {"model": model.fingerprint, "seed": cfg.seed}
    domains = [o.domain for o in organisms]
    sets = question_sets(cfg, domains)  # missing data fails here, before any work
    trajectory_sets = {**sets, "first-plot": (sets["first-plot"][0], cfg.trajectory_samples or cfg.first_plot_samples)}

    judged, judges = {"rows": [], "paths": []}, None
    if cfg.judge_answers:
        judged = stages.run("judges", {**base_inputs, **{k: getattr(cfg, k) for k in (
            "judge_layers", "judge_groups", "coherence_groups", "val_groups", "extra_domains", "extra_groups",
            "n_boot")}}, lambda: fit_judges(cfg, features, out, say), outputs=lambda r: r["paths"])
        judges = tuple(load_validated(p, features) for p in judged["paths"])
    answer_inputs = {**base_inputs, "judges": judged["rows"], **{k: getattr(cfg, k) for k in (
        "first_plot_questions", "general_questions", "general_samples",
        "in_domain_questions", "max_new_tokens")}}
    if (cfg.first_plot_variants, cfg.system_prompt) != ("all", DEFAULT_SYSTEM_PROMPT):  # earlier runs keep their keys
        answer_inputs.update(first_plot_variants=cfg.first_plot_variants, system_prompt=cfg.system_prompt)

    answered: list[str] = []  # this run's answer files (not whatever else lies in <out>/answers)

    def answers(point: Checkpoint, final: bool = True) -> None:
        if clock.allows(f"answers {point.tag}"):
            t = time.perf_counter()
            these = sets if final else trajectory_sets
            result = stages.run(f"answers-{point.tag}", {**answer_inputs, "adapter": point.adapter,
                                                 "first_plot_samples": these["first-plot"][1]},
                       lambda: answer_and_judge(cfg, model, point, these, judges, out), outputs=lambda r: [r["path"]])
            answered.append(result["path"])
            done = "answered + judged" if judges else "answered"
            say(f"{done} {point.tag} ({time.perf_counter() - t:.0f}s, {clock.elapsed():.0f}s in)")

    answers(Checkpoint("base", "", 0, ""))
    trained: dict[str, dict] = {}
    need = 0.0  # an organism and its final answers take about as long as the slowest one before it
    for org in organisms:
        if not clock.allows(f"train {org.name}", need):
            continue
        t = time.perf_counter()
        trained[org.name] = stages.run(f"train-{org.name}", {
            **base_inputs, "data": DOMAIN_DATA[org.domain], "config": asdict(train_config(cfg, org.recipe, org.seed))},
            lambda: train_organism(cfg, model, org, out, say), outputs=lambda r: [r["final"]])
        info = trained[org.name]
        answers(Checkpoint(org.domain, org.recipe, info["steps"][-1], info["checkpoints"][-1], org.seed))
        need = max(need, time.perf_counter() - t)
    for org in organisms:  # the trajectory: intermediate checkpoints, last
        info = trained.get(org.name)
        for step, path in zip(info["steps"][:-1], info["checkpoints"][:-1]) if info else ():
            answers(Checkpoint(org.domain, org.recipe, step, path, org.seed), final=False)

    rows = [r for p in answered for r in read_judged(p)]
    write_judged(rows, out / "answers.jsonl")
    training = {k: {"steps": v["steps"], "losses": v["losses"], "grad_norms": v.get("grad_norms", []),
                    "seconds": v.get("seconds"), "final": v["final"]} for k, v in trained.items()}
    if judges is None:  # sampled only: the answers wait for a judge validated on this model's samples
        summary = {"config": config_dict(cfg), "judges": [], "table": [], "training": training,
                   "answers": str(out / "answers.jsonl"), "n_answers": len(rows), "skipped": clock.skipped,
                   "seconds": round(clock.elapsed(), 1), "stage_seconds": {k: round(v, 1) for k, v in stages.seconds.items()},
                   "stages_reused": stages.reused}
        write_json_atomic(out / "em_table.json", summary)
        return EmOrganismsRun(summary, [], rows, trained, out)
    table = em_table(rows, *judges, n_boot=cfg.n_boot, seed=cfg.seed)
    summary = {"config": config_dict(cfg), "judges": judged["rows"], "table": [r.to_json() for r in table],
               "training": training,
               "skipped": clock.skipped, "seconds": round(clock.elapsed(), 1),
               "stage_seconds": {k: round(v, 1) for k, v in stages.seconds.items()}, "stages_reused": stages.reused}
    write_json_atomic(out / "em_table.json", summary)
    return EmOrganismsRun(summary, table, rows, trained, out)
