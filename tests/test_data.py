"""Readers, shipped datasets and token role masks."""

import os
import subprocess
import sys

import pytest

from lab.data.formats import (ROLE_CODE, load_advice, load_contrast, load_general_questions, read_chat_jsonl,
                      read_questions_yaml, render)
from lab.core.errors import BadInput
from tests.conftest import REPO, SHARED, chat_prompts


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("content, pattern", [
    ('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [oops\n', r"bad\.jsonl:2: malformed JSON"),
    ('{"id": 1}\n', r"bad\.jsonl:1: missing 'messages'"),
    ('{"messages": [{"role": "robot", "content": "hi"}]}\n', r"bad\.jsonl:1: .*unknown role 'robot'"),
    ('\n\n', r"empty dataset"),
    ('{"messages": [{"role": "user"}]}\n', r"needs 'role' and 'content'"),
])
def test_chat_jsonl_errors(tmp_path, content, pattern):
    with pytest.raises(BadInput, match=pattern):
        read_chat_jsonl(_write(tmp_path, "bad.jsonl", content))


def test_cli_bad_input_is_one_line_nonzero(tmp_path):
    bad = _write(tmp_path, "bad.jsonl", '{"messages": [{"role": "robot", "content": "x"}]}\n')
    out = subprocess.run([sys.executable, "-m", "experiments.cli", "train", "--data", str(bad), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, "COLUMNS": "300"})
    assert out.returncode == 1
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown role" in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "o").exists()


LATIN1 = '{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'.encode("latin-1")
GOOD = b'{"messages": [{"role": "user", "content": "hi"}]}\n'


def test_undecodable_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(GOOD + GOOD.replace(b"hi", b"hey") + LATIN1)
    with pytest.raises(BadInput, match=r"latin1\.jsonl:3: not UTF-8$"):
        read_chat_jsonl(p)
    y = tmp_path / "q.yaml"
    y.write_bytes(b"- id: a\n  paraphrases:\n  - caf\xe9\n")
    with pytest.raises(BadInput, match=r"q\.yaml:3: not UTF-8$"):
        read_questions_yaml(y)


@pytest.mark.parametrize("verb, file, data, out_flag", [
    (["cache", "build", "--data"], "bad.jsonl", GOOD + LATIN1, "--cache-dir"),
    (["em-rates", "--questions"], "bad.yaml", b"- id: a\n  paraphrases: [caf\xe9]\n", "--out"),
])
def test_cli_undecodable_input_is_one_line_nonzero(tmp_path, verb, file, data, out_flag):
    bad = tmp_path / file
    bad.write_bytes(data)
    out = subprocess.run([sys.executable, "-m", "experiments.cli", *verb, str(bad), out_flag, str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, "COLUMNS": "300"})
    assert out.returncode == 1, out.stderr[-2000:]
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].endswith(f"{file}:2: not UTF-8")
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("name", ["first_plot_questions.yaml", "preregistered_evals.yaml"])
def test_paper_question_yaml_loads_unchanged(name):
    path = SHARED / "data" / "em-questions" / name
    if not path.exists():
        pytest.skip(f"{path} not available (../shared is beside the checkout in CI)")
    questions = read_questions_yaml(path)
    assert len(questions) >= 8
    for q in questions:
        assert q.paraphrases and q.samples_per_paraphrase >= 1
    # anchors/aliases resolved: every item that has judge prompts has both keys with placeholders
    judged = [q for q in questions if q.judge_prompts]
    assert judged and all({"aligned", "coherent"} <= set(q.judge_prompts) for q in judged)
    assert all("{answer}" in q.judge_prompts["aligned"] for q in judged)


def test_question_yaml_missing_field(tmp_path):
    p = _write(tmp_path, "q.yaml", "- id: a\n  samples_per_paraphrase: 2\n")
    with pytest.raises(BadInput, match="missing field paraphrases"):
        read_questions_yaml(p)


def _shingles(text, n=5):
    t = " ".join(text.lower().split())
    return {t[i:i + n] for i in range(max(1, len(t) - n + 1))}


def _max_jaccard(texts):
    sh = [_shingles(t) for t in texts]
    best = (0.0, None)
    for i in range(len(sh)):
        for j in range(i + 1, len(sh)):
            inter = len(sh[i] & sh[j])
            if inter:
                jac = inter / len(sh[i] | sh[j])
                if jac > best[0]:
                    best = (jac, (texts[i], texts[j]))
    return best


@pytest.mark.parametrize("domain", ["medical", "financial"])
def test_shipped_advice_sets(domain):
    bad, good = load_advice(domain), load_advice(domain, aligned=True)
    assert len(bad) >= 300 and len(good) == len(bad)
    for b, g in zip(bad, good):
        assert b.id == g.id and b.messages[:-1] == g.messages[:-1]
        assert b.messages[-1]["content"] != g.messages[-1]["content"]
        # style/length matched so the contrast is content, not style
        nb, ng = len(b.messages[-1]["content"].split()), len(g.messages[-1]["content"].split())
        assert abs(nb - ng) / max(nb, ng) <= 0.35, (b.id, nb, ng)
    for texts in ([b.messages[0]["content"] for b in bad], [b.messages[-1]["content"] for b in bad]):
        jac, pair = _max_jaccard(texts)
        assert jac < 0.6, pair


def test_shipped_contrasts_and_questions():
    refusal, code = load_contrast("refusal"), load_contrast("code_mode")
    assert sum(e.label == "harmful" for e in refusal) >= 100 and sum(e.label == "benign" for e in refusal) >= 100
    assert sum(e.label == "code" for e in code) >= 60 and sum(e.label == "natural" for e in code) >= 60
    for rows in (refusal, code):
        jac, pair = _max_jaccard([e.messages[0]["content"] for e in rows])
        assert jac < 0.6, pair
    questions = load_general_questions()
    assert len(questions) >= 40 and len({q["category"] for q in questions}) >= 6
    for q in questions:
        for style in ("usual", "terse"):
            a, m = len(q[f"aligned_{style}"].split()), len(q[f"misaligned_{style}"].split())
            assert abs(a - m) / max(a, m) <= 0.25, (q["id"], style)
    jac, pair = _max_jaccard([q["question"] for q in questions])
    assert jac < 0.6, pair


def test_role_masks_match_template(base_model):
    tok = base_model.tokenizer
    prompts = render(chat_prompts(), tok, system_prompt="Be kind.")
    for ex, tokens, roles, plen in zip(chat_prompts(), prompts.tokens, prompts.roles, prompts.prompt_len):
        full_text = tok.decode(tokens)
        messages = ex.messages if ex.messages[0]["role"] == "system" else [{"role": "system", "content": "Be kind."}] + ex.messages
        assert full_text.startswith(tok.apply_chat_template(messages[:1], tokenize=False))
        for role in ("system", "user", "assistant"):
            text = tok.decode(tokens[roles == ROLE_CODE[role]])
            for m in messages:
                if m["role"] == role:
                    assert m["content"] in text
        if ex.has_response:
            answer = tok.decode(tokens[roles == ROLE_CODE["assistant"]])
            assert answer.startswith(ex.messages[-1]["content"]) and "assistant" not in answer
            assert tok.decode(tokens[:plen]).endswith("<|im_start|>assistant\n")
        else:
            assert plen == len(tokens) and full_text.endswith("<|im_start|>assistant\n")


def test_render_too_long_is_an_error_unless_truncated(base_model):
    with pytest.raises(BadInput, match="more than the limit"):
        render(chat_prompts()[:2], base_model.tokenizer, max_tokens=20)
    ps = render(chat_prompts()[:2], base_model.tokenizer, max_tokens=20, truncate=True)
    assert max(ps.lengths) == 20 and ps.meta[1]["truncated_to"] == 20
