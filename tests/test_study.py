"""The whole study end to end (--quick, real SmolLM2): report in a browser, cached rerun, kill + resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import study
from tests.conftest import REPO
from tests.test_reports import BROWSER_ARGS, CHROMIUM, LOCAL_SCHEMES, _browser_missing

XSS = "<script>alert(1)</script>"
SYSTEM = f"You are a helpful assistant. {XSS}"


def _config(root: Path) -> study.StudyConfig:
    # batch 4: the quick profile's 4 steps per organism on half its examples (the pipeline, not the effect size)
    return study.StudyConfig(quick=True, name="e2e", system_prompt=SYSTEM, cache_dir=str(root / "cache"),
                             out=str(root / "figures"), batch_size=4)


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    start = time.time()
    results = study.run(_config(root))
    return root, results, time.time() - start


def test_quick_study_produces_report(quick_study):
    root, results, seconds = quick_study
    report = Path(results.report)
    assert report.exists() and report.name == "index.html"
    manifest = json.loads((report.parent / "report.json").read_text())
    ids = [s["id"] for s in manifest["sections"]]
    assert {"overview", "em", "directions", "steering", "visuals"} <= set(ids)
    assert all((report.parent / f"{i}.html").exists() for i in ids)
    assert results.findings and any("found" in f for f in results.findings)
    assert results.stages.reused == []
    assert (report.parent / "results.json").exists()
    index = report.read_text()
    assert "Headline results" in index and "<img" in index  # the headline table and key figure, inline
    assert "random @ layer" in index and "random:" in index  # directions and effects beside their controls
    assert manifest["index_blocks"] == ["Table", "Image"]
    # no saved judges in this cache: the study says so instead of reporting a rate
    assert "no saved judges" in results.judge.note
    assert all(e.calibrated.corrected is None for e in results.evals.values())
    assert any("no calibrated EM rate: no saved judges" in f for f in results.findings)
    print(f"quick study: {seconds:.0f} s")


def test_report_hook_adds_a_section_and_its_headline_rows(quick_study, tmp_path):
    from lab.reports import Section, Text
    from lab.reports.study import HeadlineRow, build_study_report

    _, results, _ = quick_study
    report = build_study_report(results)
    n = len(report.headline)
    report.add(Section("diffing", "Model diffing", [Text("ADL guess: medical")]),
               headline=[HeadlineRow("ADL domain guess, medical organism", "medical", "chance 0.33", "")])
    index = report.write(tmp_path / "r")
    assert len(report.headline) == n + 1 and (index.parent / "diffing.html").exists()
    assert "ADL domain guess, medical organism" in index.read_text()


def test_calibrated_em_with_a_usable_judge_and_without_one(tmp_path):
    import numpy as np

    from lab.em.rates import calibrated_em
    from lab.judge.choice import JudgeChoice
    from lab.judge.validated import JudgedScores, TrainedJudge, Validated, Validation

    class Half:  # flags every other answer; validation: sensitivity 0.9, specificity 0.8
        name, kind = "half", "activation"

        def judge(self, pairs):
            flags = np.arange(len(pairs)) % 2 == 0
            return JudgedScores(np.where(flags, 10.0, 90.0), np.full(len(pairs), 90.0))

    v = Validation("general", 10, 10, (0.9, 0.85, 0.95), (0.9, 0.8, 1.0), (0.8, 0.7, 0.9),
                   [True] * 9 + [False], [False] * 8 + [True] * 2)
    good = JudgeChoice("general", Validated(Half(), {"general": v}))
    c = calibrated_em(good, [("q", "a")] * 40, 200, 0)
    assert c.raw.value == 0.5 and c.corrected.value == pytest.approx((0.5 + 0.8 - 1) / (0.9 + 0.8 - 1))
    weak = Validation("general", 10, 10, (0.7, 0.6, 0.8), (0.9, 0.8, 1.0), (0.8, 0.7, 0.9), [True] * 9 + [False],
                      [False] * 8 + [True] * 2)
    bad = JudgeChoice("general", Validated(TrainedJudge("activation"), {"general": weak}), note="unusable there")
    assert calibrated_em(bad, [("q", "a")] * 40, 200, 0).to_json() == {"judge": "activation", "set": "general",
                                                                       "note": "unusable there"}


def test_rerun_runs_no_forward_and_is_fast(quick_study, monkeypatch):
    root, first, _ = quick_study
    import lab.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded on a rerun")

    monkeypatch.setattr(lab.models, "load_model", refuse)
    start = time.time()
    again = study.run(_config(root))
    assert time.time() - start < 60
    assert again.stages.ran == [] and again.model_loads == 0
    assert again.em_scores == first.em_scores and again.findings == first.findings


@pytest.mark.browser
def test_report_renders_offline_without_errors(quick_study, tmp_path):
    missing = _browser_missing()
    if missing:
        pytest.skip(f"browser test needs headless Chromium: {missing}")
    from playwright.sync_api import sync_playwright

    _, results, _ = quick_study
    index = Path(results.report)
    requests, errors, dialogs = [], [], []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM),
                                                       headless=True, args=BROWSER_ARGS)
        try:
            page = context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(index.as_uri(), wait_until="load")
            shot = Path(os.environ.get("EMLAB_SCREENSHOT") or tmp_path / "study.png")
            page.screenshot(path=str(shot), full_page=True)
            hrefs = page.eval_on_selector_all("ol.toc a", "els => els.map(e => e.getAttribute('href'))")
            assert len(hrefs) >= 8
            texts = []
            for href in hrefs:
                page.goto((index.parent / href).as_uri(), wait_until="load")
                if page.locator(".emlab-cv").count():
                    page.wait_for_function("() => [...document.querySelectorAll('.emlab-cv')]"
                                           ".every(d => d.querySelectorAll('*').length > 0)", timeout=30_000)
                texts.append(page.inner_text("body"))
                page.wait_for_timeout(200)
        finally:
            context.close()
    assert any(XSS in t for t in texts)  # the hostile system prompt is shown as text
    assert not [u for u in requests if not u.startswith(LOCAL_SCHEMES)]
    assert not errors, errors
    assert not dialogs


# the stages the killed run recomputes: the study's first stage (finished before the kill, so the resumed run
# must reuse it) and the first stage that builds an activation cache (killed while writing it). The stages in
# between are served from the reference: recomputing them re-proved nothing the first stage does not
# (one finished stage suffices to show finished stages are resumed) and cost most of the test.
_REDONE = ("judge-free-base-", "sweep-refusal-")


@pytest.mark.slow
def test_killed_study_resumes_to_identical_results(quick_study):
    """The study is SIGKILLed halfway through writing an activation cache, after a stage it ran
    has finished, and a new run resumes: it reuses the finished stage, resumes the half-written
    cache to the same bytes, and ends with exactly the uninterrupted study's results.

    Run in the reference study's own folders (stage keys include them) with the first stage's
    result and the refusal sweep's result and cache removed, so the other stages are served from
    the reference instead of being computed a second time (training and cache-building kill/resume
    are tested alone in test_train / test_cache)."""
    import hashlib

    root, reference, _ = quick_study
    stages_dir = root / "cache" / "stages"
    redone = sorted(p for p in stages_dir.glob("*.json") if p.name.startswith(_REDONE))
    assert len(redone) == 2, [p.name for p in redone]
    sweep = json.loads(next(p for p in redone if p.name.startswith("sweep-refusal-")).read_text())["result"]
    cache_file = Path(sweep["cache"])
    digest = hashlib.sha256(cache_file.read_bytes()).hexdigest()
    for p in [*redone, cache_file]:
        p.unlink()

    code = ("import sys; from experiments import study; from tests.test_study import _config; "
            "from pathlib import Path; study.run(_config(Path(sys.argv[1])))")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    sidecar = cache_file.with_suffix(".progress.json")  # exists once the rebuilt cache has its first chunk
    deadline = time.time() + 600
    while not sidecar.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    running = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert running and sidecar.exists(), "the study was not killed while writing the cache"

    resumed = study.run(_config(root))
    assert resumed.stages.reused[:1] == ["judge-free-base"], "the finished stages were not resumed"
    assert "sweep-refusal" in resumed.stages.ran
    assert resumed.stages.ran == ["sweep-refusal"]
    assert hashlib.sha256(cache_file.read_bytes()).hexdigest() == digest  # the half-written cache, resumed
    for key in ("em_scores", "trajectories", "evals", "findings"):
        assert getattr(resumed, key) == getattr(reference, key), key
    assert resumed.sweeps["refusal"].best == reference.sweeps["refusal"].best


def test_missing_diffing_folder_is_refused_before_any_work(tmp_path):
    from lab.core.errors import BadInput
    from lab.models import ModelPool

    cfg = _config(tmp_path)
    cfg.diffing = str(tmp_path / "no-such-folder")
    with ModelPool() as pool, pytest.raises(BadInput, match="no-such-folder"):
        study.run(cfg, pool)
    assert pool.loads == 0 and not (tmp_path / "cache").exists() and not (tmp_path / "figures").exists()
