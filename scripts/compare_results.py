"""Compare two study `results.json` files number by number: `python scripts/compare_results.py OLD.json NEW.json`.

Either file may be schema 1 (emlab <= 0.2: display strings such as "AUROC [95% CI]" stored as
keys, flat `*_lo` / `*_hi` fields) or schema 2 (typed: `{"schema": 2, ...}`, every CI an
`{"value", "lo", "hi", "n"}`). A schema-2 file is first mapped back onto schema 1 (`to_v1`):
display strings are re-made from the typed numbers with the formats emlab <= 0.2 used, so every
number and every string is compared exactly (floats with ==; nan equals nan).

Ignored, because they differ between any two runs: timings (`train_seconds`, `stages`), peak GPU
memory (`stage_peak_gb`), the report's path, and which stages ran or were reused. Hex hashes
inside paths (organism folders are named by a hash of their training config) are shown as
`<hash>`, so two runs whose training configs differ only in fields that do not change the
training still compare equal on everything the training produced.

Prints "identical" or each differing path with both values; exits 1 on a difference.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

VOLATILE = {"train_seconds", "stage_peak_gb", "stages", "report"}
HASH = re.compile(r"[0-9a-f]{12,}")


def ci(value: float, lo: float, hi: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def est(e: dict, digits: int = 3) -> str:
    return ci(e["value"], e["lo"], e["hi"], digits)


def flat(name: str, e: dict) -> dict:
    return {name: e["value"], f"{name}_lo": e["lo"], f"{name}_hi": e["hi"]}


# --------------------------------------------------------------------------- schema 2 -> schema 1


def best_rows(methods: list[str], best: list[dict], random: dict | None) -> list[dict]:
    by = {b["method"]: b for b in best}
    rows = []
    for m in methods:
        if m == "random":
            if random is not None:
                rows.append({"method": "random", "best layer": "mean of all",
                             "AUROC [95% CI]": f"{random['mean']:.3f} (range {random['low']:.2f}-{random['high']:.2f})"})
            continue
        b = by[m]
        rows.append({"method": m, "best layer": b["layer"], "AUROC [95% CI]": est(b["auroc"]), "acc": f"{b['acc']:.3f}",
                     "sep (SD)": f"{b['sep_sd']:.2f}",
                     "random @ layer": f"{b['random_at_layer']:.3f}" if b["random_at_layer"] is not None else "",
                     "n train/test": f"{b['n_train']}/{b['auroc']['n']}"})
    return rows


def layer_row(s: dict) -> dict:
    row = {"method": s["method"], "layer": s["layer"], "pooling": s["pooling"]}
    for name in ("auroc", "acc", "sep_sd"):
        row.update(flat(name, s[name]))
    row.update(sep_raw=s["sep_raw"], n_train=s["n_train"], n_test=s["auroc"]["n"])
    if s.get("sklearn_auroc") is not None:
        row["sklearn_auroc"] = s["sklearn_auroc"]
    return row


def sweep(s: dict) -> dict:
    out = {"config": s["config"], "best": best_rows(s["config"]["methods"], s["best"], s["random"]),
           "cache": s["cache"], "out": s["out"]}
    if s["sklearn_max_diff"] is not None:
        out["max_abs_auroc_diff_vs_sklearn"] = s["sklearn_max_diff"]
    return out


def pooling(p: dict) -> dict:
    rows = []
    for x in p["best"]:
        if x["best"] is None:
            rows.append({"pooling": x["pooling"], "method": x["method"], "best layer": "-",
                         "AUROC [95% CI]": "n/a: classes have identical features here", "mean AUROC over layers": "n/a"})
        else:
            rows.append({"pooling": x["pooling"], "method": x["method"], "best layer": x["best"]["layer"],
                         "AUROC [95% CI]": est(x["best"]["auroc"]), "mean AUROC over layers": f"{x['mean_auroc']:.3f}"})
    return {"config": p["config"], "degenerate": p["degenerate"], "out": p["out"], "rows": rows}


def transfer(t: dict) -> dict:
    rows = [{"direction from": x["source"], "scored on": x["target"], "best layer": x["best"]["layer"],
             "AUROC [95% CI]": est(x["best"]["auroc"]), "random @ layer": f"{x['best']['random_at_layer']:.3f}",
             "cosine (median over layers)": f"{x['median_cosine']:.3f}"} for x in t["pairs"]]
    return {"config": t["config"], "out": t["out"], "rows": rows}


def projection(p: dict) -> dict:
    rows = [{"prompts": r["prompts"], "model": r["model"], "mean projection": r["mean"]["value"], "lo": r["mean"]["lo"],
             "hi": r["mean"]["hi"], "n": r["mean"]["n"], "layer": r["layer"]} for r in p["rows"]]
    return {"config": p["config"], "layer": p["layer"], "out": p["out"], "rows": rows}


def steer_row(r: dict) -> dict:
    row = {"experiment": r["experiment"], "condition": r["condition"], "layer": r["layer"], "ratio": r["ratio"]}
    if r.get("refusal") is not None:
        row.update(flat("refusal", r["refusal"]), n=r["refusal"]["n"])
        row.update(flat("logodds_shift", r["logodds_shift"]))
    if r.get("em_shift") is not None:
        row.update(flat("em_shift", r["em_shift"]))
    row.update(flat("coherence", r["coherence"]))
    if r.get("judged_em") is not None:
        row.update(flat("judged_em", r["judged_em"]), judged_coherent=r["judged_coherent"], judged_n=r["judged_em"]["n"])
    return row


def steer(s: dict) -> dict:
    out = {"config": s["config"], "target": s["target"], "best_layer": s["best_layer"],
           "rows": [steer_row(r) for r in s["rows"]], "pick": steer_row(s["pick"]) if s["pick"] else None,
           "counts": s["counts"], "model": s["model"], "out": s["out"]}
    if s["target"] == "refusal":
        out["selection"] = s["selection"]
    else:
        e = s["unsteered_judged_em"]
        out["unsteered_judged"] = {} if e is None else {**flat("judged_em", e), "judged_coherent":
                                                        s["unsteered_judged_coherent"], "judged_n": e["n"]}
    return out


def ablation(a: dict) -> dict:
    rows = [{"organism": r["organism"], "condition": r["condition"], "score": r["score"], **flat("em_dbase", r["em_dbase"]),
             **flat("change", r["change"]), "n": r["em_dbase"]["n"], "reduction": r["reduction"]} for r in a["rows"]]
    return {"config": a["config"], "out": a["out"], "rows": rows}


def trajectory(t: dict) -> dict:
    rows = [{"step": r["step"], "score": r["score"], "value": r["delta"]["value"], "value_lo": r["delta"]["lo"],
             "value_hi": r["delta"]["hi"], "n": r["delta"]["n"]} for r in t["rows"]]
    return {"config": t["config"], "rows": rows, "out": t["out"]}


def evals(e: dict) -> dict:
    out = {k: e[k] for k in ("model", "fingerprint", "generation", "intervention", "n_answers", "own_system_prompts",
                             "code_mode_rate", "refusal_rate", "examples")}
    if e["judge"] is not None:
        out.update(judge=e["judge"], em=e["em"])
    if e["calibrated"] is not None:
        out["calibrated_em"] = e["calibrated"]
    return out


def judge(j: dict) -> dict:
    v = j["validation"]
    if v is not None:
        t = lambda x: ci(*x)  # noqa: E731
        return {"judge": j["judge"], "validation set": v["set_name"], "n (mis/ali)": f"{v['n_misaligned']}/{v['n_aligned']}",
                "AUROC": t(v["auroc"]), "sensitivity": t(v["sensitivity"]), "specificity": t(v["specificity"]),
                "usable": "yes" if v["auroc"][0] >= 0.75 else "NO", "note": j["note"]}
    return {"judge": j["judge"], **({"validation set": j["validation_set"]} if j["validation_set"] else {}),
            "note": j["note"]}


def to_v1(r: dict) -> dict:
    """A schema-2 `results.json` as the schema-1 file emlab <= 0.2 wrote for the same run."""
    v1 = {k: r[k] for k in ("config", "profile", "plan", "train_seconds", "organisms", "stage_loads", "stage_peak_gb",
                            "em_scores", "stages", "model_loads", "findings", "report")}
    v1["trajectories"] = {k: trajectory(t) for k, t in r["trajectories"].items()}
    v1["judge"] = judge(r["judge"])
    v1["evals"] = {k: evals(e) for k, e in r["evals"].items()}
    v1["sweeps"] = {k: sweep(s) for k, s in r["sweeps"].items()}
    v1["model_contrast"] = {k: {"best": best_rows(m["methods"], m["best"], m["random"]),
                                "rows": [layer_row(s) for s in m["scores"]]} for k, m in r["model_contrast"].items()}
    if r["pooling"] is not None:
        v1["pooling"] = pooling(r["pooling"])
    v1["transfer"] = {k: transfer(t) for k, t in r["transfer"].items()}
    v1["projections"] = {k: projection(p) for k, p in r["projections"].items()}
    v1["steer_refusal"] = steer(r["steer_refusal"])
    if r["steer_em"] is not None:
        v1["steer_em"] = steer(r["steer_em"])
    v1["ablation"] = ablation(r["ablation"])
    v1["visuals"] = {**r["visuals"]["files"], "layer": r["visuals"]["layer"]}
    return v1


# --------------------------------------------------------------------------- the comparison


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, str) and isinstance(b, str):
        return HASH.sub("<hash>", a) == HASH.sub("<hash>", b)
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Every path where `a` and `b` differ (dict keys and list lengths too)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if not path and k in VOLATILE:
                continue
            where = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                out.append(f"{where}: only in {'old' if k in a else 'new'}")
            else:
                out += differences(a[k], b[k], where)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if _same(a, b) else [f"{path}: {a!r} vs {b!r}"]


def load_v1(path: str) -> dict:
    data = json.loads(open(path, encoding="utf-8").read())
    return to_v1(data) if data.get("schema") == 2 else data


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.splitlines()[0])
        return 2
    old, new = (load_v1(p) for p in argv)
    found = differences(old, new)
    leaves = sum(1 for _ in _leaves(old))
    if not found:
        print(f"identical ({leaves} values compared; ignored: {', '.join(sorted(VOLATILE))})")
        return 0
    print(f"{len(found)} differences (of {leaves} values):")
    print("\n".join(found))
    return 1


def _leaves(obj: Any, top: bool = True):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not (top and k in VOLATILE):
                yield from _leaves(v, False)
    elif isinstance(obj, list):
        for v in obj:
            yield from _leaves(v, False)
    else:
        yield obj


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
