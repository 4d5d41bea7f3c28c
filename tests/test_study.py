"""The whole study end to end (--quick, real SmolLM2): report in a browser, cached rerun, kill + resume."""

import json
import os
import random
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
    return study.StudyConfig(quick=True, name="e2e", system_prompt=SYSTEM, cache_dir=str(root / "cache"),
                             out=str(root / "figures"))


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    start = time.time()
    results = study.run(_config(root))
    return root, results, time.time() - start


def test_quick_study_produces_report(quick_study):
    root, results, seconds = quick_study
    report = Path(results["report"])
    assert report.exists() and report.name == "index.html"
    manifest = json.loads((report.parent / "report.json").read_text())
    ids = [s["id"] for s in manifest["sections"]]
    assert {"overview", "em", "directions", "steering", "visuals"} <= set(ids)
    assert all((report.parent / f"{i}.html").exists() for i in ids)
    assert results["findings"] and any("found" in f for f in results["findings"])
    assert results["stages"]["reused"] == []
    assert (report.parent / "results.json").exists()
    print(f"quick study: {seconds:.0f} s")


def test_rerun_runs_no_forward_and_is_fast(quick_study, monkeypatch):
    root, first, _ = quick_study
    import lab.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded on a rerun")

    monkeypatch.setattr(lab.models, "load_model", refuse)
    start = time.time()
    again = study.run(_config(root))
    assert time.time() - start < 60
    assert again["stages"]["ran"] == [] and again["model_loads"] == 0
    assert again["em_scores"] == first["em_scores"] and again["findings"] == first["findings"]


@pytest.mark.browser
def test_report_renders_offline_without_errors(quick_study, tmp_path):
    missing = _browser_missing()
    if missing:
        pytest.skip(f"browser test needs headless Chromium: {missing}")
    from playwright.sync_api import sync_playwright

    _, results, _ = quick_study
    index = Path(results["report"])
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


@pytest.mark.slow
def test_killed_study_resumes_to_identical_results(quick_study, tmp_path):
    _, reference, _ = quick_study
    code = ("import sys; from experiments import study; from tests.test_study import _config; "
            "from pathlib import Path; study.run(_config(Path(sys.argv[1])))")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(random.Random(0).uniform(40, 120))  # some stage in the middle of the pipeline
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((tmp_path / "figures" / "e2e" / "results.json").read_text())
    assert resumed["stages"]["reused"], "nothing was resumed"
    for key in ("em_scores", "findings"):
        assert resumed[key] == json.loads(json.dumps(reference[key])), key
    assert resumed["sweeps"]["refusal"]["best"] == reference["sweeps"]["refusal"]["best"]
