"""Write benchmarks/results.md from the files the measuring commands leave behind.

    python benchmarks/results.py

Reads reports/lite0-protocols/metrics.csv (the Lite0 protocol run `make run` was until
round 2), benchmarks/speed.json (from
`make bench`), benchmarks/make_run_timing.json (from benchmarks/time_make_run.sh) and the
other benchmark scripts' Markdown tables (face_stage, self_blend, localise, load), and
puts the seeds' published figures from ../shared/notes/protocols.md beside ours. Nothing
here is typed in by hand except those published figures and the goals.
"""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METRICS = ROOT / "reports" / "lite0-protocols" / "metrics.csv"
SPEED = ROOT / "benchmarks" / "speed.json"
TIMING = ROOT / "benchmarks" / "make_run_timing.json"
OUT = ROOT / "benchmarks" / "results.md"
# Protocol P5 runs: (metrics.csv, command); models trained with augmentation carry "+aug:".
P5_RUNS = [
    (
        ROOT / "reports" / "p5" / "metrics.csv",
        "facecheck evaluate --protocols P1,P4 --perturb jpeg70,resize0.5 --run-name p5 "
        "--out reports/p5",
    ),
    (
        ROOT / "reports" / "p5-aug" / "metrics.csv",
        "facecheck evaluate --protocols P1,P4 --perturb jpeg70,resize0.5 "
        "--train-augment degrade --run-name p5-aug --out reports/p5-aug",
    ),
]
# Further runs of `facecheck evaluate` reported beside make-run's: (metrics.csv, what, command).
EXTRA_RUNS = [
    (
        ROOT / "reports" / "clip-p1" / "metrics.csv",
        "P1 and P7-HARD with frozen CLIP ViT-B/16 features (issues 8 and 9)",
        "python benchmarks/clip_features.py && facecheck evaluate --protocols P1,P7-HARD "
        "--backbones clip_vit_b16,clip_vit_b16_layers,efficientnet_lite0+clip_vit_b16 --heads "
        "logreg,mlp --cv 5 --cv-protocols P1 --run-name clip-p1 --out reports/clip-p1",
    ),
    (
        ROOT / "reports" / "clip-all" / "metrics.csv",
        "ALL, P3 and P2 with the shipped detector's recipe (CLIP layers 8 + 12 + LR)",
        "facecheck evaluate --protocols ALL,P3,P2 --backbones clip_vit_b16_layers --heads "
        "logreg --run-name clip-all --out reports/clip-all",
    ),
    (
        ROOT / "reports" / "clip-regions" / "metrics.csv",
        "ALL, P4 and P7 with the shipped detector's recipe: region-aware CLIP head (class "
        "tokens + the regions' pooled patch tokens), threshold fpr:0.1 (issues 8 and 9)",
        "facecheck evaluate --protocols ALL,P4,P7 --backbones clip_vit_b16_layers --heads "
        "logreg --head-input image+regions --max-fpr 0.1 --run-name clip-regions "
        "--out reports/clip-regions",
    ),
    (
        ROOT / "reports" / "clip-l8" / "metrics.csv",
        "ALL, P4 and P7 with the shipped detector's recipe since 2026-11-23: the region-aware "
        "head on CLIP cut after layer 8 (its class token + the regions' pooled patch tokens), "
        "fpr:0.1 (issue 6: a third less compute; benchmarks/clip_depth.md)",
        "facecheck evaluate --protocols ALL,P4,P7 --backbones clip_vit_b16_l8 --heads logreg "
        "--head-input image+regions --max-fpr 0.1 --run-name clip-l8 --out reports/clip-l8",
    ),
    (
        ROOT / "reports" / "clip-l8-int8-attn-fc1" / "metrics.csv",
        "ALL, P4 and P7 with the same recipe on CLIP cut after layer 8 with the attention "
        "projections and fc1 in 8-bit (uint8 weights) in ONNX Runtime, fc2 fp32, the head "
        "fitted on those features (issue 6: a 15% faster pass, not shipped: "
        "benchmarks/clip_ort_int8.md)",
        "facecheck evaluate --protocols ALL,P4,P7 --backbones clip_vit_b16_l8_int8_attn_fc1 "
        "--heads logreg --head-input image+regions --max-fpr 0.1 --run-name "
        "clip-l8-int8-attn-fc1 --out reports/clip-l8-int8-attn-fc1",
    ),
    (
        ROOT / "reports" / "clip-window" / "metrics.csv",
        "ALL, P4 and P7 with the same recipe on the shipped input (224 px face, 197 tokens) "
        "and on the 160 px window over the region boxes (101 tokens), both extracted on the "
        "same machine (issue 6: the window's pass takes 40% less time; not shipped: "
        "benchmarks/clip_window.md)",
        "facecheck evaluate --protocols ALL,P4,P7 --backbones "
        "clip_vit_b16_l8,clip_vit_b16_l8_window --heads logreg --head-input image+regions "
        "--max-fpr 0.1 --run-name clip-window --out reports/clip-window",
    ),
    (
        ROOT / "reports" / "clip-regionmil" / "metrics.csv",
        "ALL and P4 with the regionmil head (region logits pooled into the image logit, "
        "taught the rff region bits) on the shipped recipe's features, fpr:0.1 (issue 9)",
        "facecheck evaluate --protocols ALL,P4 --backbones clip_vit_b16_layers --heads "
        "regionmil --head-input image+regions --max-fpr 0.1 --run-name clip-regionmil "
        "--out reports/clip-regionmil",
    ),
    (
        ROOT / "reports" / "clip-fpr01" / "metrics.csv",
        "P4, P7 and ALL with the shipped recipe, threshold rule fpr:0.01 (at most 1% of each "
        "real source's validation reals flagged; issue 8)",
        "facecheck evaluate --protocols P4,P7,ALL --backbones clip_vit_b16_layers --heads "
        "logreg --max-fpr 0.01 --run-name clip-fpr01 --out reports/clip-fpr01",
    ),
    (
        ROOT / "reports" / "srm-p1" / "metrics.csv",
        "P1 with the noise-residual stream (SRM filters), alone and beside CLIP (issue 9)",
        "facecheck evaluate --protocols P1 --backbones srm,clip_vit_b16_layers,"
        "clip_vit_b16_layers+srm --heads logreg --cv 5 --cv-protocols P1 --run-name srm-p1 "
        "--out reports/srm-p1",
    ),
    (
        ROOT / "reports" / "p1-tta" / "metrics.csv",
        "P1 with horizontal-flip test-time augmentation",
        "facecheck evaluate --protocols P1 --tta --cv 5 --run-name p1-tta --out reports/p1-tta",
    ),
]

# Published figures (../shared/notes/protocols.md) and this project's goals, per protocol.
SEEDS = {
    "P1": (
        "thesis simple CNN: test accuracy 89.86% (random split); frozen Lite0 + LR "
        "reference: ROC-AUC 0.665 ± 0.022 (5-fold CV)",
        "accuracy >= 92%, ROC-AUC >= 0.97",
    ),
    "P2": (
        "thesis SMOTE+undersampling+focal: recall 55.6%, precision 19.2%",
        "recall >= 90% at precision >= 50%",
    ),
    "P3": (
        "thesis voting classifier: recall 91.67%, precision 39.28% (mixed-source test)",
        "same-source recall >= 97% with <= 1.5% sent to a person",
    ),
    "P3-212": ("thesis 1:212: recall 91.67%, precision 39.28%, 2.3% to a person", "as P3"),
    "P4": (
        "notebook: CNN AUC 0.917; EfficientNetV2-B0 AUC 0.982 (other data); frozen "
        "Lite0 + LR reference, gan vs rff real: ROC-AUC 0.981",
        "ROC-AUC >= 0.995",
    ),
    "ALL": ("(the shipped default detector's recipe)", "-"),
}


def _f(v: str, d: int = 3) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if x != x else f"{x:.{d}f}"


def _ci(row: dict, m: str) -> str:
    lo, hi = row.get(f"{m}_ci_lo", ""), row.get(f"{m}_ci_hi", "")
    return f"{_f(row[m])} ({_f(lo, 2)}-{_f(hi, 2)})" if lo not in ("", None) else _f(row[m])


def _cv(row: dict) -> str:
    if not row.get("cv_roc_auc_mean"):
        return "-"
    return f"{_f(row['cv_roc_auc_mean'])} ± {_f(row['cv_roc_auc_std'])}"


def metrics_section() -> list[str]:
    if not METRICS.exists():
        return ["No `reports/lite0-protocols/metrics.csv`: see its command below.", ""]
    rows = _val_rows(METRICS)
    lines = [
        "## Detection metrics (test split, threshold chosen on validation)",
        "",
        "From the Lite0 protocol run that `make run` was until round 2 (`facecheck train "
        "--protocol ALL` then `facecheck evaluate --protocols P1,P2,P3,P3-212,P4,ALL,P6 --cv 5 "
        f"--run-name make-run`; `reports/lite0-protocols/report.md`, run `{rows[0]['run']}`, seed "
        f"{rows[0]['seed']}, stratified 80/10/10 split by content hash, Youden threshold on "
        "validation, 95% bootstrap CIs in brackets). **Headline** rows are same-source where "
        "the protocol allows; rows marked *biased* compare classes from different sources.",
        "",
    ]
    for proto in dict.fromkeys(r["protocol"] for r in rows):
        seed, goal = SEEDS.get(proto, ("", ""))
        lines += [
            f"### {proto}",
            "",
            f"- seeds / reference: {seed}",
            f"- goal: {goal}",
            "",
            "| test set | model | ROC-AUC | 5-fold ROC-AUC (train+val) | accuracy | recall "
            "| precision | FPR | recall@10%FPR | flagged/10k at 1:1000 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r["protocol"] != proto:
                continue
            name = r["test_set"] + (" *biased*" if r["source_biased"] == "True" else "")
            lines.append(
                f"| {name} (n={r['n']}, {r['n_fake']} fake) | {r['model']} "
                f"| {_ci(r, 'roc_auc')} | {_cv(r)} | {_ci(r, 'accuracy')} | {_ci(r, 'recall')} "
                f"| {_ci(r, 'precision')} | {_ci(r, 'fpr')} | {_f(r['recall_at_10fpr'])} "
                f"| {_f(r['flagged_per_10k'], 0)} |"
            )
        lines.append("")
    return lines


def extra_section() -> list[str]:
    lines = []
    for path, what, command in EXTRA_RUNS:
        if not path.exists():
            continue
        rows = _val_rows(path)
        lines += [
            f"### {what}",
            "",
            f"`{command}` (seed {rows[0]['seed']}):",
            "",
            "| protocol | test set | model | ROC-AUC | 5-fold ROC-AUC (train+val) | accuracy "
            "| recall | FPR | recall@10%FPR |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['protocol']} | {r['test_set']} | {r['model']} | {_ci(r, 'roc_auc')} "
                f"| {_cv(r)} | {_ci(r, 'accuracy')} | {_ci(r, 'recall')} | {_ci(r, 'fpr')} "
                f"| {_f(r['recall_at_10fpr'])} |"
            )
        lines.append("")
    return lines


P7_RUN = (
    ROOT / "reports" / "p7" / "metrics.csv",
    "facecheck evaluate --protocols P4,P7 --backbones efficientnet_lite0,mobilenet_v2,"
    "efficientnet_lite0+mobilenet_v2 --heads logreg,mlp --run-name p7 --out reports/p7",
)
P7_GOAL = "out-of-source ROC-AUC >= 0.95 for generated faces, within 0.03 of in-source"


CLIP_P7_RUN = (
    ROOT / "reports" / "clip-p4-p7" / "metrics.csv",
    "python benchmarks/clip_features.py && facecheck evaluate --protocols P4,P7 --backbones "
    "clip_vit_b16,clip_vit_b16_layers,efficientnet_lite0+clip_vit_b16_layers --heads "
    "logreg,mlp --run-name clip-p4-p7 --out reports/clip-p4-p7",
)


def p7_section() -> list[str]:
    """Protocol P7 (reports/p7, and reports/clip-p4-p7 when there): in vs out of source."""
    lines = []
    for run in (P7_RUN, CLIP_P7_RUN):
        lines += _p7_table(*run, first=not lines)
    return lines


def _p7_table(path: Path, command: str, first: bool) -> list[str]:
    if not path.exists():
        return []
    rows = _val_rows(path)
    by = {(r["protocol"], r["model"], r["test_set"]): r for r in rows}
    head = ["## P7: leave one source out (issue 8)", ""] if first else []
    lines = [
        *head,
        f"`{command}` (seed {rows[0]['seed']}). The held-out source is never in train or "
        "val; in-source is the usual test split, out-of-source the held-out source against "
        "the same test images of the other class. Recall at the validation threshold. Goal: "
        f"{P7_GOAL}; the field's published gap is ~0.2.",
        "",
        "| protocol | model | ROC-AUC in | ROC-AUC out | gap | recall in | recall out | FPR out |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (proto, model, test), r in by.items():
        if test != "in-source":
            continue  # P4 rows of the same run are in p4_backbones_section
        o = by[(proto, model, "out-of-source")]
        gap = float(r["roc_auc"]) - float(o["roc_auc"])
        lines.append(
            f"| {proto} | {model} | {_ci(r, 'roc_auc')} | {_ci(o, 'roc_auc')} | {gap:+.3f} "
            f"| {_f(r['recall'])} | {_f(o['recall'])} | {_f(o['fpr'])} |"
        )
    return [*lines, ""]


def p4_backbones_section() -> list[str]:
    """P4 per backbone (concatenation and CLIP included) and head, from the P7 runs."""
    rows = [
        r
        for path, _ in (P7_RUN, CLIP_P7_RUN)
        if path.exists()
        for r in _val_rows(path)
        if r["protocol"] == "P4"
    ]
    if not rows:
        return []
    lines = [
        "### P4 per backbone and head (the P7 runs above)",
        "",
        "Goal: ROC-AUC >= 0.995 with CLIP features.",
        "",
        "| test set | model | ROC-AUC | recall | FPR | flagged/10k |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['test_set']}{' (source-biased)' if r['source_biased'] == 'True' else ''} "
            f"| {r['model']} | {_ci(r, 'roc_auc')} | {_ci(r, 'recall')} | {_ci(r, 'fpr')} "
            f"| {_f(r['flagged_per_10k'], 0)} |"
        )
    return [*lines, ""]


REENCODE_RUN = (
    ROOT / "reports" / "p7-reencode90" / "metrics.csv",
    "facecheck evaluate --protocols P4,P7-TPDNE,P7-FAKEFACES,P7-RFF,P7-UTKFACE --backbones "
    "efficientnet_lite0 --heads logreg --reencode 90 --run-name p7-reencode90 "
    "--out reports/p7-reencode90",
)


def reencode_section() -> list[str]:
    """The same models with every picture re-saved as JPEG q90 at load, against as-is."""
    path, command = REENCODE_RUN
    plain_paths = [P7_RUN[0], METRICS]
    if not path.exists() or not all(p.exists() for p in plain_paths):
        return []

    def load(p: Path) -> dict:
        return {(r["protocol"], r["test_set"], r["model"]): r for r in _val_rows(p)}

    plain = {k: v for p in plain_paths for k, v in load(p).items()}
    lines = [
        "### Removing the JPEG shortcut: every picture re-saved as JPEG q90 at load",
        "",
        f"`{command}`, against the same models on the files as they are (`reports/p7`, "
        "`reports/lite0-protocols`). The audit finds UTKFace's files at q75 and 200 px, "
        "every other source at q95 and 256 px.",
        "",
        "| protocol | test set | model | ROC-AUC as is | ROC-AUC q90 | recall as is / q90 "
        "| FPR as is / q90 |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in load(path).items():
        o = plain.get(key)
        if o is None:
            continue
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {_f(o['roc_auc'])} | {_f(r['roc_auc'])} "
            f"| {_f(o['recall'])} / {_f(r['recall'])} | {_f(o['fpr'])} / {_f(r['fpr'])} |"
        )
    return [*lines, ""]


def p5_section() -> list[str]:
    """Protocol P5 from reports/p5/metrics.csv: clean vs perturbed, same head and threshold."""
    runs = [(path, command) for path, command in P5_RUNS if path.exists()]
    if not runs:
        return []
    rows = [r for path, _ in runs for r in _val_rows(path)]
    by = {(r["protocol"], r["test_set"], r["model"]): r for r in rows}
    perts = sorted({r["test_set"].split("+", 1)[1] for r in rows if "+" in r["test_set"]})
    lines = [
        "### P5: robustness to re-saving and rescaling",
        "",
        *[f"`{command}`" for _, command in runs],
        "",
        f"Seed {rows[0]['seed']}. The test images of P1 and P4 re-saved as JPEG q70 and "
        "resized to 0.5x and back; same heads, same validation thresholds. `+aug:degrade` "
        "models were trained with one degraded copy of each training image (random rescale "
        "0.4-1x and JPEG q50-95, not the test perturbations). Goal: ROC-AUC drop <= 0.03. "
        "Each cell: ROC-AUC (change) / recall / FPR at the validation threshold. The "
        "augmented models' thresholds sit lower, so part of their recall under perturbation "
        "is bought with a higher clean FPR: compare the FPRs, and judge robustness by the "
        "ROC-AUC change.",
        "",
        "| protocol | test set | model | clean ROC-AUC / recall / FPR | "
        + " | ".join(perts)
        + " |",
        "|---|---|---|---|" + "---|" * len(perts),
    ]
    for (proto, test_set, model), r in sorted(by.items()):
        if "+" in test_set:
            continue
        auc = float(r["roc_auc"])
        cells = []
        for pert in perts:
            q = by[(proto, f"{test_set}+{pert}", model)]
            cells.append(
                f"{_f(q['roc_auc'])} ({float(q['roc_auc']) - auc:+.3f}) / {_f(q['recall'])}"
                f" / {_f(q['fpr'])}"
            )
        lines.append(
            f"| {proto} | {test_set} | {model} | {_f(r['roc_auc'])} / "
            f"{_f(r['recall'])} / {_f(r['fpr'])} | " + " | ".join(cells) + " |"
        )
    return [*lines, ""]


THESIS_DIR = ROOT / "reports" / "thesis-method"
FINETUNE_DIR = ROOT / "reports" / "finetune"


def _val_rows(path: Path) -> list[dict]:
    """The rows of a metrics.csv at the validation-chosen threshold (not at 0.5)."""
    return [r for r in csv.DictReader(path.open()) if r["threshold_kind"].startswith("val")]


def _csv_rows(path: Path) -> list[dict]:
    rows = list(csv.DictReader(path.open()))
    for r in rows:
        for k, v in r.items():
            with contextlib.suppress(ValueError, AttributeError):
                r[k] = json.loads(v) if v.startswith("[") else float(v)
    return rows


def thesis_section() -> list[str]:
    """Issue 4: strategies and ensembles on P2/P3 (benchmarks/thesis_method.py) + fine-tunes."""
    from facecheck.decision.review import matrix_metrics
    from thesis_method import _group, _mean, _p, _sd

    if not (THESIS_DIR / "strategies.csv").exists():
        return ["No `reports/thesis-method/` yet: run `python benchmarks/thesis_method.py`.", ""]
    models = _csv_rows(THESIS_DIR / "strategies.csv")
    ens = _csv_rows(THESIS_DIR / "ensembles.csv")
    seeds = sorted({int(r["seed"]) for r in models})
    lines = [
        "## The thesis's method: imbalance strategies, stacking, the human-review vote (P2, P3)",
        "",
        f"`python benchmarks/thesis_method.py`: seeds {', '.join(map(str, seeds))} (a split and "
        "a draw of fakes each), heads on frozen Lite0 / MobileNetV2 features, every "
        "imbalance strategy; thresholds and ensembles from validation; same-source test "
        "sets. Means over seeds; full tables in [thesis_method.md](thesis_method.md). "
        "Policy `recall:0.97` = the threshold reaching 97% recall on validation.",
        "",
        "| protocol | model | same-source ROC-AUC (sd) | recall:0.97 on test: recall / FPR "
        "/ flagged per 10k at 1:1000 | seed / goal |",
        "|---|---|---|---|---|",
    ]
    for proto in dict.fromkeys(r["protocol"] for r in models):
        sub = [r for r in models if r["protocol"] == proto and r["test_set"] == "same-source"]
        g = _group(sub, "model", "policy")
        by_auc = sorted({m for m, _ in g}, key=lambda m: -_mean(g[(m, "youden")], "roc_auc"))
        seed, goal = SEEDS.get(proto, ("", ""))
        for i, m in enumerate(["lite0/logreg:class_weight", *[x for x in by_auc[:2]]]):
            y_, t_ = g[(m, "youden")], g[(m, "recall:0.97")]
            note = "baseline" if i == 0 else "best by mean ROC-AUC"
            lines.append(
                f"| {proto} | {m} ({note}) | {_mean(y_, 'roc_auc'):.3f} ({_sd(y_, 'roc_auc'):.3f})"
                f" | {_p(_mean(t_, 'recall'))} / {_p(_mean(t_, 'fpr'))} / "
                f"{_mean(t_, 'flagged_per_10k'):.0f} | {seed if i == 0 else ''} "
                f"{'/ ' + goal if i == 0 else ''} |"
            )
    lines += [
        "",
        "Votes (5 members: four heads plus a stacker; `fixed-0.5` = the thesis's argmax "
        "members, `recall:0.97` = the vote policy). Matrix summed over seeds: rows actual "
        "fake, real; columns automatic fake, automatic real, to a person.",
        "",
        "| protocol | vote | policy | test set | matrix | caught | auto recall / precision "
        "| to a person | auto errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (proto, e, pol, test), rs in _group(
        [r for r in ens if "vote" in r["ensemble"]], "protocol", "ensemble", "policy", "test_set"
    ).items():
        m = sum(np.array(r["matrix"]) for r in rs)
        v = matrix_metrics(m)
        (ff, fr, fv), (rf, rr, rv) = m.tolist()
        biased = " *biased*" if str(rs[0]["source_biased"]) == "True" else ""
        lines.append(
            f"| {proto} | {e} | {pol} | {test}{biased} | [{ff} {fr} {fv}; {rf} {rr} {rv}] | "
            f"{_p(v['caught'])} | {_p(v['auto_recall'])} / {_p(v['auto_precision'])} | "
            f"{_p(v['review_share'])} | {v['auto_errors']} |"
        )
    lines.append("")
    summaries = sorted(FINETUNE_DIR.glob("*/*/summary.json"))
    if summaries:
        lines += [
            "### Fine-tuned networks",
            "",
            "`python benchmarks/finetune.py` (details in [finetune.md](finetune.md)):",
            "",
            "| protocol | run | device | epochs (best) | test ROC-AUC | recall | precision | FPR |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for path in summaries:
            f = json.loads(path.read_text())
            t = f["test"]["same-source"]
            lines.append(
                f"| {f['protocol']} | {path.parent.name} | {f['device']} | "
                f"{f['config']['epochs']} ({f['best_epoch']}) | {t['roc_auc']:.3f} | "
                f"{_p(t['recall'])} | {_p(t['precision'])} | {_p(t['fpr'])} |"
            )
        lines.append("")
    return lines


def markdown_section(path: Path, title: str, intro: str) -> list[str]:
    """Another benchmark's Markdown table, under a heading of this file (its own H1 dropped)."""
    if not path.exists():
        return [f"## {title}", "", f"No `{path.relative_to(ROOT)}` yet.", ""]
    body = [ln for ln in path.read_text().splitlines() if not ln.startswith("# ")]
    return [f"## {title}", "", intro, *body, ""]


def speed_section() -> list[str]:
    lines = ["## Speed", ""]
    if SPEED.exists():
        s = json.loads(SPEED.read_text())
        lines += [
            f"`make bench` ({s['date']}; {s['machine']}; {s['torch_threads']} torch "
            "threads), uncached, including file read and JPEG decode:",
            "",
            "| what | figure |",
            "|---|---|",
        ]
        for bb, e in s["extraction"].items():
            lines.append(
                f"| feature extraction, {bb}, batch {e['batch_size']} "
                f"| {e['images_per_s']} images/s ({e['images']} images) |"
            )
        c = s["check_latency"]
        lines += [
            f"| `check` one image, default detector ({c['model']}) | p50 {c['p50_ms']} ms, "
            f"p95 {c['p95_ms']} ms ({c['images']} images; model load "
            f"{c['model_load_s']} s, first call incl. tracing {c['first_check_s']} s) |"
        ]
        if "explain_latency" in s:
            e = s["explain_latency"]
            lines.append(
                f"| `explain` one picture + overlay PNG, default detector ({e['model']}) "
                f"| p50 {e['p50_ms']} ms, p95 {e['p95_ms']} ms ({e['images']} images) |"
            )
        for name, f in s.get("face_stage", {}).items():
            what = {
                "tight_crops": "face stage alone, the data's tight crops (passthrough)",
                "face_in_1200x900": "face stage alone, a face at 300 px in a 1200x900 picture "
                "(detect, refine, align, crop)",
            }.get(name, name)
            lines.append(
                f"| {what} | p50 {f['p50_ms']} ms, p95 {f['p95_ms']} ms ({f['images']} "
                f"images; {', '.join(f'{n} {k}' for k, n in f['outcomes'].items())}) |"
            )
    else:
        lines.append("No `benchmarks/speed.json` yet: run `make bench`.")
    lines.append("")
    if TIMING.exists():
        t = json.loads(TIMING.read_text())
        lines += [
            "`benchmarks/time_make_run.sh` (the whole `make run`, installed venv):",
            "",
            "| run | wall time |",
            "|---|---|",
        ]
        for k, v in t["runs"].items():
            lines.append(f"| {k} | {v} s ({v / 60:.1f} min) |")
        lines += ["", f"Machine: {t['machine']}; {t['date']}.", ""]
    return lines


def main() -> None:
    lines = [
        "# facecheck benchmark results",
        "",
        "Generated by `python benchmarks/results.py` from files that `make run`, "
        "`make bench`, `benchmarks/time_make_run.sh` and the extra runs below write; rerun "
        "those to refresh.",
        "",
        *metrics_section(),
        *extra_section(),
        *p5_section(),
        *p7_section(),
        *p4_backbones_section(),
        *reencode_section(),
        *thesis_section(),
        *markdown_section(
            ROOT / "benchmarks" / "face_stage.md",
            "The face stage on P1 and P4 (issue 5)",
            "From `benchmarks/face_stage.md`. The shared data are tight crops: with `auto` they "
            "pass through (features identical) and only pictures without exactly one face "
            "are left out; `align` re-crops every face to the rff framing.",
        ),
        *markdown_section(
            ROOT / "benchmarks" / "self_blend.md",
            "Fine-tuning with self-blended fakes and region crops, P1 (issue 9, in progress)",
            "From `benchmarks/self_blend.md` (GPU runs; the goal is P1 ROC-AUC >= 0.90 by "
            "5-fold CV).",
        ),
        *markdown_section(
            ROOT / "benchmarks" / "clip_p1.md",
            "P1 variants on frozen CLIP features: training data, self-blended fakes, regions "
            "(issue 9)",
            "From `benchmarks/clip_p1.md` (`python benchmarks/clip_p1.py`; 5-fold CV, then "
            "P1's test split once).",
        ),
        *markdown_section(
            ROOT / "benchmarks" / "thresholds.md",
            "Threshold rules in and out of source (issues 8 and 9)",
            "From `benchmarks/thresholds.md` (`python benchmarks/thresholds.py`).",
        ),
        *markdown_section(
            ROOT / "benchmarks" / "localise.md",
            "Localisation, P6 (issue 6)",
            "From `benchmarks/localise.md` (`python benchmarks/localise.py`); the Lite0 "
            "protocol run's report (`reports/lite0-protocols`) has a P6 section too.",
        ),
        *markdown_section(
            ROOT / "benchmarks" / "load.md",
            "The service under load (issue 7)",
            "From `benchmarks/load.md` (`python benchmarks/load.py`): `facecheck serve` on "
            "loopback, 1, 4 and 16 concurrent clients uploading real images.",
        ),
        *speed_section(),
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
