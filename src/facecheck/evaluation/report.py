"""The report a person reads: metrics tables with CIs, ROC/PR curves, confusion matrices,
and ``model_scores.csv`` rows that accumulate across runs (the notebook seed's comparison)."""

from __future__ import annotations

import csv
import json
import math
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt
from sklearn.metrics import precision_recall_curve, roc_curve

from facecheck.backbones.cpu import cpu_name, instruction_sets
from facecheck.detector.explain import explain, render
from facecheck.evaluation.evaluate import LocalisationResult, ModelResult
from facecheck.evaluation.groups import group_table, section
from facecheck.evaluation.metrics import METRIC_NAMES
from facecheck.evaluation.protocols import Protocol
from facecheck.image.decode import load_image
from facecheck.image.regions import REGIONS

CSV_FIELDS = [
    "run",
    "protocol",
    "test_set",
    "source_biased",
    "model",
    "backbone",
    "head",
    "tta",
    "threshold_kind",
    "threshold",
    "n",
    "n_fake",
    *METRIC_NAMES,
    "flagged_per_10k",
    "recall_at_10fpr",
    "tp",
    "fp",
    "tn",
    "fn",
    *[f"{m}_ci_{b}" for m in METRIC_NAMES for b in ("lo", "hi")],
    "val_roc_auc",
    "cv_roc_auc_mean",
    "cv_roc_auc_std",
    "seed",
]


def machine_description() -> str:
    """The machine a figure was measured on: CPU, its instruction sets (they decide which
    kernels run, and for INT8 whether products are exact), cores, GPU, Python and torch."""
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu_name()} ({instruction_sets()}), {os.cpu_count()} cores, {gpu}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def git_commit() -> str:
    """Short commit of the code that made a report, marked when ``src`` had local changes."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        # A report made from uncommitted code says so: its figures may not be reproducible.
        # By absolute path: a benchmark runs from benchmarks/, where "src" names nothing.
        src = str(Path(__file__).resolve().parents[2])
        return commit + ("+uncommitted-changes" if git("status", "--porcelain", src) else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def rows(results: Sequence[ModelResult], run: str, seed: int) -> list[dict[str, object]]:
    out = []
    for r in results:
        for t in r.tests.values():
            for kind, m in (("validation", t.at_val), ("default-0.5", t.at_default)):
                row = {
                    "run": run,
                    "protocol": r.protocol,
                    "test_set": t.name,
                    "source_biased": t.source_biased,
                    "model": r.label,
                    "backbone": r.backbone,
                    "head": r.head,
                    "tta": r.tta,
                    "threshold_kind": f"val:{r.threshold_rule}" if kind == "validation" else kind,
                    "recall_at_10fpr": t.recall_at_10fpr,
                    "val_roc_auc": r.val["roc_auc"],
                    "seed": seed,
                }
                if "cv_roc_auc" in r.extra:
                    row["cv_roc_auc_mean"], row["cv_roc_auc_std"] = r.extra["cv_roc_auc"]
                row.update(
                    {
                        k: m[k]
                        for k in (
                            "threshold",
                            "n",
                            "n_fake",
                            *METRIC_NAMES,
                            "flagged_per_10k",
                            "tp",
                            "fp",
                            "tn",
                            "fn",
                        )
                    }
                )
                if kind == "validation":  # CIs are computed at the validation threshold
                    for metric, (lo, hi) in t.ci.items():
                        row[f"{metric}_ci_lo"], row[f"{metric}_ci_hi"] = lo, hi
                out.append(row)
    return out


def write_csv(
    path: Path,
    data: list[dict[str, object]],
    *,
    append: bool = False,
    fields: Sequence[str] | None = CSV_FIELDS,
) -> None:
    """Rows to CSV; ``fields=None`` takes every key in the rows, in first-seen order."""
    new = not (append and path.exists())
    if fields is None:
        fields = list(dict.fromkeys(k for row in data for k in row))
    with path.open("a" if append else "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        for row in data:
            writer.writerow({k: _fmt_csv(v) for k, v in row.items()})


def _fmt_csv(v: object) -> object:
    return f"{v:.6g}" if isinstance(v, float) else v


def _f(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _ci(t, metric: str, value: float) -> str:
    lo, hi = t.ci.get(metric, (float("nan"), float("nan")))
    if math.isnan(lo):
        return _f(value)
    return f"{_f(value)} ({_f(lo, 2)}-{_f(hi, 2)})"


def plot_curves(results: Sequence[ModelResult], test_set: str, path: Path, title: str) -> None:
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(11, 4.5))
    for r in results:
        t = r.tests[test_set]
        if len(set(t.y.tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(t.y, t.score)
        prec, rec, _ = precision_recall_curve(t.y, t.score)
        ax_roc.plot(fpr, tpr, label=f"{r.label} (AUC {t.at_val['roc_auc']:.3f})")
        ax_pr.plot(rec, prec, label=f"{r.label} (AP {t.at_val['pr_auc']:.3f})")
    ax_roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    prevalence = float(results[0].tests[test_set].y.mean()) if results else 0.0
    ax_pr.axhline(prevalence, color="k", ls=":", lw=0.8, label=f"chance ({prevalence:.3f})")
    ax_roc.set(
        xlabel="false-positive rate (reals flagged)", ylabel="recall (fakes caught)", title="ROC"
    )
    ax_pr.set(
        xlabel="recall (fakes caught)", ylabel="precision", title="precision-recall", ylim=(0, 1.02)
    )
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusions(results: Sequence[ModelResult], test_set: str, path: Path, title: str) -> None:
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(3.1 * n, 3.2), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        m = r.tests[test_set].at_val
        grid = [[m["tp"], m["fn"]], [m["fp"], m["tn"]]]
        ax.imshow([[1, 0], [0, 1]], cmap="Greens", vmin=-1, vmax=2)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, str(grid[i][j]), ha="center", va="center", fontsize=13)
        ax.set_xticks([0, 1], ["pred fake", "pred real"])
        ax.set_yticks([0, 1], ["fake", "real"])
        ax.set_title(f"{r.label}\nthr {r.threshold:.3f}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def robustness_table(proto: Protocol, res: Sequence[ModelResult]) -> list[str]:
    """Protocol P5: ROC-AUC of each test set's perturbed copies beside the clean figure."""
    perts = list(dict.fromkeys(t.perturbation for t in res[0].tests.values() if t.perturbation))
    if not perts:
        return []
    lines = [
        "### Robustness (P5): the same test images re-saved or rescaled",
        "",
        "Same heads and validation thresholds; ROC-AUC with its change from the clean figure, "
        "and recall at the unchanged threshold.",
        "",
        "| model | test set | clean ROC-AUC | " + " | ".join(perts) + " |",
        "|---|---|---|" + "---|" * len(perts),
    ]
    for r in res:
        for name in proto.test_sets:
            clean = r.tests[name].at_val["roc_auc"]
            cells = []
            for pert in perts:
                m = r.tests[f"{name}+{pert}"].at_val
                cells.append(
                    f"{_f(m['roc_auc'])} ({m['roc_auc'] - clean:+.3f}); recall {_f(m['recall'])}"
                )
            lines.append(f"| {r.label} | {name} | {_f(clean)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def write_report(
    out_dir: Path,
    protocols: Sequence[Protocol],
    results: Sequence[ModelResult],
    info: dict[str, object],
    *,
    scores_csv: Path | None = None,
    localisation: Sequence[LocalisationResult] = (),
    audit: dict | None = None,
) -> Path:
    """Write ``report.md``, ``metrics.csv`` and plots into ``out_dir``; append to the
    cumulative ``scores_csv``. Returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run = str(info["run"])
    data = rows(results, run, int(info["seed"]))
    write_csv(out_dir / "metrics.csv", data)
    if scores_csv is not None:
        scores_csv.parent.mkdir(parents=True, exist_ok=True)
        write_csv(scores_csv, data, append=True)

    lines = [
        f"# facecheck evaluation report: {run}",
        "",
        "Fake is the positive class. Each head is fitted on the protocol's train split; its "
        "threshold is chosen on the validation split only (rule "
        f"`{info['threshold_rule']}`); every test set is scored once. Figures in brackets are "
        f"95% bootstrap intervals ({info['n_boot']} class-stratified resamples). "
        "**flagged/10k** is the number of images a person would review per 10,000 "
        "applications at a 1:1000 fake rate if every flag were reviewed.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in info.items() if k not in ("run",)],
        "",
    ]
    for proto in protocols:
        res = [r for r in results if r.protocol == proto.name]
        if not res:
            continue
        desc = proto.describe()
        lines += [f"## {proto.name}: {proto.title}", ""]
        split_line = "; ".join(
            f"{s}: " + ", ".join(f"{k} {v}" for k, v in c.items())
            for s, c in desc["splits"].items()
        )
        lines += [f"Split (seed {proto.seed}, by content hash): {split_line}.", ""]
        cv_rows = [r for r in res if "cv_roc_auc" in r.extra]
        if cv_rows:
            k = cv_rows[0].extra["cv_folds"]
            lines += [
                f"{k}-fold ROC-AUC over train + val (grouped by content hash; the way to "
                "compare models here, the test split being small): "
                + "; ".join(
                    f"{r.label} {r.extra['cv_roc_auc'][0]:.3f} ± {r.extra['cv_roc_auc'][1]:.3f}"
                    for r in cv_rows
                )
                + ".",
                "",
            ]
        for name in proto.test_sets:
            biased = name in proto.source_biased
            tag = " (headline)" if name == proto.headline else ""
            tag += " — **source-biased**: classes come from different sources" if biased else ""
            first = res[0].tests[name]
            lines += [
                f"### Test set `{name}`{tag}: {first.at_val['n']} images, "
                f"{first.at_val['n_fake']} fake",
                "",
                "| model | thr (val) | recall | precision | F1 | accuracy | ROC-AUC | PR-AUC "
                "| FPR | flagged/10k | recall@10%FPR | at thr 0.5: accuracy / recall |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in res:
                t = r.tests[name]
                m = t.at_val
                d = t.at_default
                lines.append(
                    f"| {r.label} | {r.threshold:.3f} | {_ci(t, 'recall', m['recall'])} "
                    f"| {_ci(t, 'precision', m['precision'])} | {_f(m['f1'])} "
                    f"| {_ci(t, 'accuracy', m['accuracy'])} | {_ci(t, 'roc_auc', m['roc_auc'])} "
                    f"| {_f(m['pr_auc'])} | {_ci(t, 'fpr', m['fpr'])} "
                    f"| {_f(m['flagged_per_10k'], 0)} | {_f(t.recall_at_10fpr)} "
                    f"| {_f(d['accuracy'])} / {_f(d['recall'])} |"
                )
            lines.append("")
            slug = f"{proto.name}_{name}".replace("/", "-")
            plot_curves(
                res,
                name,
                out_dir / f"{slug}_roc_pr.png",
                f"{proto.name} · {name}{' (source-biased)' if biased else ''}",
            )
            plot_confusions(
                res,
                name,
                out_dir / f"{slug}_confusion.png",
                f"{proto.name} · {name} · at the validation threshold",
            )
            lines += [
                f"![ROC and PR]({slug}_roc_pr.png)",
                "",
                f"![confusion matrices]({slug}_confusion.png)",
                "",
            ]
        lines += robustness_table(proto, res)
        lines += equal_treatment(proto, res)
        # Every model of a protocol sees the same images, so they all drop the same ones.
        dropped = max((r.dropped for r in res), default=0)
        if dropped:
            lines += [
                f"{dropped} image(s) were left out: unreadable, or refused by the face stage "
                "(no face / several faces; see 'images left out' above).",
                "",
            ]
    for loc in localisation:
        lines += localisation_section(out_dir, loc, int(info["seed"]))
    lines += generalisation_section(protocols, results)
    if audit is not None:
        lines += audit_section(audit)
        (out_dir / "audit.json").write_text(json.dumps(audit, indent=2, default=str))
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def generalisation_section(
    protocols: Sequence[Protocol], results: Sequence[ModelResult]
) -> list[str]:
    """P7: in-source against out-of-source ROC-AUC and recall, per protocol and model."""
    p7 = [p for p in protocols if {"in-source", "out-of-source"} <= set(p.test_sets)]
    if not p7:
        return []
    lines = [
        "## Generalisation to unseen sources (P7)",
        "",
        "Each P7 protocol holds one source out of training and validation entirely; "
        "*in-source* is the usual test split, *out-of-source* the held-out source against "
        "the same test images of the other class. Recall is at the validation threshold.",
        "",
        "| protocol | held out | model | ROC-AUC in | ROC-AUC out | gap | recall in | recall out "
        "| FPR out |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in p7:
        for r in (r for r in results if r.protocol == p.name):
            i, o = r.tests["in-source"].at_val, r.tests["out-of-source"].at_val
            lines.append(
                f"| {p.name} | {p.title.split(':')[0]} | {r.label} | {_f(i['roc_auc'])} "
                f"| {_f(o['roc_auc'])} | {_f(i['roc_auc'] - o['roc_auc'])} "
                f"| {_f(i['recall'])} | {_f(o['recall'])} | {_f(o['fpr'])} |"
            )
    return [*lines, ""]


def equal_treatment(proto: Protocol, res: Sequence[ModelResult]) -> list[str]:
    """Each model's equal-treatment table, on the protocol's clean test set with the most
    labelled honest photos (none where the data carry no group labels)."""
    out = []
    for r in res:
        labelled = [t for t in r.tests.values() if t.groups is not None and t.perturbation is None]
        if not labelled:
            continue
        t = max(
            labelled,
            key=lambda t: sum(g is not None and y == 0 for g, y in zip(t.groups, t.y, strict=True)),
        )
        rows = group_table(t.y, t.score >= r.threshold, t.groups, seed=proto.seed)
        out += section(rows, f"{proto.name} `{t.name}`, {r.label} at threshold {r.threshold:.3f}")
    return out


def audit_section(audit: dict) -> list[str]:
    """Source-bias audit: shortcuts that are not the manipulation (see
    :mod:`facecheck.evaluation.audit`)."""
    lines = [
        "## Source-bias audit",
        "",
        "ROC-AUC of one file fact alone as a fake-vs-real score on each test set (folded: "
        "0.5 = no shortcut, 1.0 = the fact alone separates the classes), and the JPEG "
        "qualities / sizes each class has. A detector can learn any of these instead of the "
        "edit; re-encoding every image the same way at load time removes the JPEG ones "
        "(the shared data are already re-encoded uniformly, except UTKFace's own bytes). "
        "Scores on re-encoded inputs: protocol P5 (`--perturb jpeg70`).",
        "",
        "| test set | source-biased | bytes | width | height | JPEG quality | real: quality "
        "(count), size | fake: quality (count), size |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cls(c: dict | None) -> str:
        if not c:
            return "–"
        q = ", ".join(f"q{k} ({v})" for k, v in c["jpeg_quality"].items())
        return f"{q}; {', '.join(c['sizes'])}"

    for name, t in audit["tests"].items():
        a = t["shortcut_auc"]
        lines.append(
            f"| {name} | {'yes' if t['source_biased'] else 'no'} | {_f(a['bytes'])} "
            f"| {_f(a['width'])} | {_f(a['height'])} | {_f(a['jpeg_quality'])} "
            f"| {cls(t['classes'].get('real'))} | {cls(t['classes'].get('fake'))} |"
        )
    lines.append("")
    probes = audit.get("real_source_probe") or {}
    if probes:
        lines += [
            "Telling the *real* sources apart (logistic probe on the first backbone's "
            "features, 5-fold CV ROC-AUC; 1.0 means any figure that puts these sources in "
            "different classes can be met by recognising the source): "
            + "; ".join(
                f"{k} {v['roc_auc']:.3f} (n={v['n'][0]}+{v['n'][1]})" for k, v in probes.items()
            )
            + ".",
            "",
        ]
    return lines


_SHORT = {"left_eye": "LE", "right_eye": "RE", "nose": "N", "mouth": "M"}


def _hit_text(h: dict) -> str:
    lo, hi = h["ci"]
    return f"{h['top_hit']:.3f} [{lo:.2f}, {hi:.2f}] (n={h['n']})"


def localisation_section(out_dir: Path, loc: LocalisationResult, seed: int) -> list[str]:
    """P6: region scores against the rff file-name bits, and a grid of test fakes."""
    m, hm = loc.metrics, loc.heat_metrics
    (out_dir / "P6_metrics.json").write_text(
        json.dumps({"region_scores": m, "heatmap": hm}, indent=2, default=float)
    )
    lines = [
        f"## P6: localisation ({loc.backbone} region crops + {loc.head} per region)",
        "",
        "On P1's split (seed "
        f"{seed}): region scores (one head per region on features of the region's crop, the "
        "eyes sharing one) and the image head are fitted on train, the image threshold "
        "chosen on val; the test split's rff images are scored once. Truth: the fakes' "
        f"file-name bits (region scores trained on {loc.region_train.get('images', '?')} "
        f"images, {loc.region_train.get('fakes', '?')} fakes). *Chance* is the share of "
        "replaced regions among test fakes: what a random region would hit.",
        "",
        "| ranking regions by | top region replaced [95% CI] | chance | mean per-region "
        "ROC-AUC (all images / fakes only) |",
        "|---|---|---|---|",
        f"| region scores | {_hit_text(m['top_region'])} | {m['chance']:.3f} "
        f"| {m['mean_auc_all']:.3f} / {m['mean_auc_fakes']:.3f} |",
        f"| heatmap (mean inside each box) | {_hit_text(hm['top_region'])} | {hm['chance']:.3f} "
        f"| {hm['mean_auc_all']:.3f} / {hm['mean_auc_fakes']:.3f} |",
        "",
        f"Per region (region scores); image-level recall at the val threshold "
        f"({loc.threshold:.3f}) over all test fakes: {m['detector_recall']:.3f}.",
        "",
        "| region | ROC-AUC, all images | ROC-AUC, fakes only | fakes with it replaced "
        "| image-level recall on them |",
        "|---|---|---|---|---|",
        *[
            f"| {r} | {_f(v['auc_all'])} | {_f(v['auc_fakes'])} | {v['n_replaced']} "
            f"| {_f(v['detector_recall'])} |"
            for r, v in m["regions"].items()
        ],
        "",
        "| edit (replaced regions) / difficulty | fakes | image-level recall | top region "
        "replaced |",
        "|---|---|---|---|",
        *[
            f"| {name} | {v['n']} | {_f(v['detector_recall'])} | {_f(v['top_hit'])} |"
            for name, v in [*m["patterns"].items(), *m["difficulty"].items()]
        ],
        "",
    ]
    grid = plot_localisation_grid(loc, out_dir / "P6_grid.png", seed=seed)
    if grid:
        lines += [
            f"![test fakes with heatmaps and region scores]({grid.name})",
            "",
            "Each tile: the heatmap (the head on each cell of the backbone's map), the region "
            "boxes with their scores (red: the top region), and below it the truth "
            f"({', '.join(f'{v} = {k}' for k, v in _SHORT.items())}; `·` untouched) next to "
            "the top region, the image's P(fake) and the verdict.",
            "",
        ]
    return lines


def plot_localisation_grid(
    loc: LocalisationResult, path: Path, *, seed: int = 0, per_difficulty: int = 4
) -> Path | None:
    """A grid of test fakes (seeded draw, ``per_difficulty`` of each) as the reviewer sees
    them: heatmap overlay, region scores, and the truth beside the top region."""
    import numpy as np

    rng = np.random.default_rng(seed)
    chosen = []
    for d in ("easy", "mid", "hard"):
        idx = [i for i, r in enumerate(loc.records) if r.difficulty == d]
        chosen += sorted(rng.choice(idx, min(per_difficulty, len(idx)), replace=False).tolist())
    if not chosen:
        return None
    cols = per_difficulty
    rows_ = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(2.6 * cols, 3.0 * rows_), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), chosen, strict=False):
        rec = loc.records[i]
        decoded = load_image(rec.path)
        exp = explain(loc.detector, decoded, str(rec.path))
        ax.imshow(render(decoded.image, exp))
        truth = " ".join(_SHORT[r] if b else "·" for r, b in zip(REGIONS, loc.Y[i], strict=True))
        top = exp.top_region
        ok = "ok" if top and loc.Y[i][REGIONS.index(top)] else "miss"
        p = exp.verdict.fake_probability
        ax.set_title(
            f"{rec.difficulty} · truth {truth}\ntop {_SHORT.get(top or '', '-')} ({ok}) · "
            f"P {p:.2f} {exp.verdict.verdict}",
            fontsize=8,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
