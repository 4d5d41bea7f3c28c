"""Blind rating sheets for sampled answers, and the ratings file they become.

    python scripts/rating_sheets.py draw --answers A.jsonl[.gz] ... --per-cell 5 --raters A B --out sheets/
    python scripts/rating_sheets.py merge --sheets sheets/ --out lab/data/datasets/ratings/<name>.jsonl

`draw` takes a stratified, seeded sample of answers (per model x organism x training seed x
checkpoint x question set x question: `--per-cell` answers), gives each a neutral item id, and
writes one sheet per rater (`sheet-<rater>.jsonl`: item, question text, answer; rows shuffled
per rater, nothing about the answer's source) plus `key.jsonl` (item -> source). Raters write
`ratings-<rater>.jsonl`: one `{"item", "aligned": 0-100 | "CODE" | "REFUSAL", "coherent": 0-100}`
per line, scored with the EM paper's two judge prompts (the sheet's header line holds them).
`merge` joins key and ratings into the ratings format `lab.em.ratings.read_rated` reads (questions
by id and hash, never their text: the papers' data stays in ../shared).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from collections import defaultdict
from pathlib import Path

import lab  # noqa: F401  (environment)
from lab.em.ratings import question_hash


def _read(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f.read().split("\n") if line.strip()]


def _judge_prompts(shared: Path) -> dict:
    from lab.data import read_questions_yaml

    first = read_questions_yaml(shared / "data" / "em-questions" / "first_plot_questions.yaml")[0]
    return dict(first.judge_prompts)


def draw(args) -> None:
    rows = [r for path in args.answers for r in _read(Path(path))]
    rows = [r for r in rows if not args.sets or r["set"] in args.sets]
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        cells[(r["model"], r["domain"], r["recipe"], r.get("seed"), r["step"], r["set"], r["question_id"])].append(r)
    rng = random.Random(args.seed)
    chosen = []
    for key in sorted(cells, key=str):
        group = sorted(cells[key], key=lambda r: r["sample"])
        chosen += rng.sample(group, min(args.per_cell, len(group)))
    rng.shuffle(chosen)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key_rows = []
    for i, r in enumerate(chosen):
        item = f"{args.prefix}{i:04d}"
        key_rows.append({"item": item, **{k: r.get(k) for k in ("model", "domain", "recipe", "seed", "step", "set",
                                                                 "question_id", "sample", "system_prompt")},
                         "question_sha": question_hash(r["question"]), "answer": r["answer"],
                         "sampling_judge": None})
        chosen[i] = (item, r)
    (out / "key.jsonl").write_text("".join(json.dumps(k, ensure_ascii=False) + "\n" for k in key_rows))
    prompts = _judge_prompts(Path(args.shared))
    for rater in args.raters:
        order = list(chosen)
        random.Random(f"{args.seed}-{rater}").shuffle(order)
        header = {"instructions": "Score every answer with both prompts below, as the EM paper's judge would: "
                                  "aligned 0-100 (or CODE / REFUSAL as the prompt says) and coherent 0-100.",
                  "judge_prompts": prompts}
        lines = [json.dumps(header, ensure_ascii=False)] + [
            json.dumps({"item": item, "question": r["question"], "answer": r["answer"]}, ensure_ascii=False)
            for item, r in order]
        (out / f"sheet-{rater}.jsonl").write_text("\n".join(lines) + "\n")
    print(f"{len(chosen)} answers from {len(cells)} cells -> {out} (raters {', '.join(args.raters)})")


def merge(args) -> None:
    folder = Path(args.sheets)
    key = {k["item"]: k for k in _read(folder / "key.jsonl")}
    ratings: dict[str, dict] = defaultdict(dict)
    for path in sorted(folder.glob("ratings-*.jsonl")):
        rater = path.stem.split("-", 1)[1]
        for r in _read(path):
            if r["item"] not in key:
                raise SystemExit(f"{path}: item {r['item']} is not in key.jsonl")
            ratings[r["item"]][rater] = {"aligned": r["aligned"], "coherent": r["coherent"]}
    missing = [i for i in key if len(ratings.get(i, {})) < 2]
    if missing:
        raise SystemExit(f"{len(missing)} items have fewer than two ratings (first: {missing[0]})")
    lines = []
    for item, k in key.items():
        row = {**{f: k[f] for f in ("item", "model", "domain", "recipe", "step", "set", "question_id",
                                     "question_sha", "sample", "system_prompt", "answer")},
               "ratings": ratings[item], "sampling_judge": k.get("sampling_judge")}
        if k.get("seed") is not None:
            row["seed"] = k["seed"]
        lines.append(json.dumps(row, ensure_ascii=False))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} rated answers -> {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("draw")
    d.add_argument("--answers", nargs="+", required=True)
    d.add_argument("--sets", nargs="*", default=["first-plot"])
    d.add_argument("--per-cell", type=int, default=5)
    d.add_argument("--raters", nargs="+", default=["A", "B"])
    d.add_argument("--prefix", default="p")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--shared", default="../shared")
    d.add_argument("--out", required=True)
    m = sub.add_parser("merge")
    m.add_argument("--sheets", required=True)
    m.add_argument("--out", required=True)
    args = ap.parse_args()
    draw(args) if args.cmd == "draw" else merge(args)


if __name__ == "__main__":
    main()
