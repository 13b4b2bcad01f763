"""The thesis's method, measured honestly: imbalance strategies, stacking and the vote (P2, P3).

    python benchmarks/thesis_method.py            # about 20 min on 2 CPU cores, warm cache

For P2, P3 and P3-212, and for each of several seeds (each seed is its own content-hash
split and its own draw of fakes), every head on both offline backbones is trained once per
imbalance strategy on the train split; thresholds and everything the ensembles learn come
from the validation split; each test set is scored once. Three operating points per model:
Youden's J, the target-recall policy and the review-budget policy (both fitted on
validation). Ensembles: the thesis's five-member vote (four differently-balanced members
plus a stacker over them) and a cross-backbone vote, each at the thesis's fixed member
thresholds (0.5, its argmax) and at the target-recall policy. The test sets are small (P2:
9 fakes, P3-212: 5), so figures are means over seeds and matrices are summed over seeds.
Writes reports/thesis-method/{strategies,ensembles}.csv (one row per seed), plots, and
benchmarks/thesis_method.md.

The thesis's members are fine-tuned ConvNeXts on GPU; here every member is a head on frozen
features (CPU), so the comparison is of *strategies and ensembling*, not of backbones.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from facecheck.backbones.registry import load_backbone
from facecheck.decision.ensemble import StackingClassifier, VotingClassifier
from facecheck.decision.policy import Policy
from facecheck.decision.review import (
    decisions_from_threshold,
    matrix_metrics,
    review_matrix,
    review_metrics,
)
from facecheck.evaluation.data import load_dataset
from facecheck.evaluation.evaluate import extract_all, xy
from facecheck.evaluation.metrics import binary_metrics
from facecheck.evaluation.protocols import build
from facecheck.evaluation.report import git_commit, machine_description, write_csv
from facecheck.features.cache import FeatureCache
from facecheck.features.extract import FeatureExtractor
from facecheck.heads.imbalance import STANDARD, Imbalance
from facecheck.heads.models import make_head

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = {"lite0": "efficientnet_lite0", "mnv2": "mobilenet_v2"}
# The thesis's four ConvNeXt recipes (section 3.10), as heads: SMOTE; SMOTE(0.4)+under(0.5)
# + focal; SMOTE(0.1)+under(0.5) + focal; SMOTE(0.1)+under(0.5) with cross-entropy.
THESIS_MEMBERS = [
    "lite0/mlp:smote",
    "lite0/mlp:smote0.4+under0.5+focal",
    "lite0/mlp:smote0.1+under0.5+focal",
    "lite0/mlp:smote0.1+under0.5",
]
DIVERSE_MEMBERS = [
    "lite0/logreg:class_weight",
    "mnv2/logreg:class_weight",
    "lite0/mlp:class_weight",
    "mnv2/mlp:class_weight",
]
THESIS = {
    "P2": "SMOTE(0.1)+under(0.5)+focal ConvNeXt: test recall 55.6%, precision 19.2%",
    "P3": "5-model vote: recall 91.67%, precision 39.28% (automatic verdicts), 2.3% to a "
    "person, 5 errors; test set CelebA reals vs rff fakes (mixed source), 1:212",
    "P3-212": "as P3 (the thesis's own ratio)",
}


def specs() -> list[str]:
    out = []
    for bb in BACKBONES:
        for s in STANDARD:
            if not Imbalance.parse(s).needs_minibatches:
                out.append(f"{bb}/logreg:{s}")
        out += [f"{bb}/mlp:{s}" for s in STANDARD]
    return out


def fit_members(proto, feats, seed):
    """Every member's scores on val and on each test set, keyed by its spec."""
    scores, C = {}, {}
    for spec in sorted(specs(), key=lambda s: ":class_weight" not in s):  # C first
        bb, head_spec = spec.split("/")
        Xtr, ytr, _ = xy(proto.split.train, feats[bb])
        params = {"seed": seed}
        if head_spec.startswith("logreg") and bb in C:
            params["C"] = C[bb]  # picked once per backbone (strategy-independent), see models
        t0 = time.perf_counter()
        head = make_head(head_spec, **params).fit(Xtr, ytr)
        if head_spec == "logreg:class_weight":
            C[bb] = head.C_
        out = {"fit_s": time.perf_counter() - t0}
        for name, ds in [("val", proto.split.val), *proto.test_sets.items()]:
            X, y, _ = xy(ds, feats[bb])
            out[name] = (y, head.predict_proba(X)[:, 1])
        scores[spec] = out
        print(f"  {proto.name} {spec}: {out['fit_s']:.1f} s", flush=True)
    return scores


def model_rows(proto, scores, policies):
    rows = []
    for spec, out in scores.items():
        yv, sv = out["val"]
        for pol in policies:
            thr = Policy.parse(pol).threshold(yv, sv)
            for test in proto.test_sets:
                y, s = out[test]
                m = binary_metrics(y, s, thr)
                rm = review_metrics(y, decisions_from_threshold(s, thr))
                rows.append(
                    {
                        "protocol": proto.name,
                        "seed": proto.seed,
                        "model": spec,
                        "policy": pol,
                        "test_set": test,
                        "source_biased": test in proto.source_biased,
                        "threshold": thr,
                        "val_recall": binary_metrics(yv, sv, thr)["recall"],
                        **{k: m[k] for k in ("recall", "precision", "f1", "roc_auc", "pr_auc")},
                        "fpr": m["fpr"],
                        "flagged_share": rm["flagged_share"],
                        "flagged_per_10k": m["flagged_per_10k"],
                        "n": m["n"],
                        "n_fake": m["n_fake"],
                        "fit_s": out["fit_s"],
                    }
                )
    return rows


def ensemble_rows(proto, scores, target, seed):
    rows = []
    for ens_name, members in (("thesis-vote", THESIS_MEMBERS), ("diverse-vote", DIVERSE_MEMBERS)):
        yv = scores[members[0]]["val"][0]
        Sv = np.column_stack([scores[m]["val"][1] for m in members])
        stack = StackingClassifier(seed=seed).fit(Sv, yv)
        Sv5 = np.column_stack([Sv, stack.oof_scores_])  # the stacker's honest val scores
        votes = {
            "fixed-0.5": VotingClassifier([0.5] * 5),
            f"recall:{target:g}": VotingClassifier().fit_target_recall(Sv5, yv, target),
        }
        for pol, vote in votes.items():
            for test in proto.test_sets:
                y = scores[members[0]][test][0]
                St = np.column_stack([scores[m][test][1] for m in members])
                St5 = np.column_stack([St, stack.predict_proba(St)[:, 1]])
                d = vote.decide(St5)
                mat = review_matrix(y, d)
                rows.append(
                    {
                        "protocol": proto.name,
                        "seed": proto.seed,
                        "ensemble": ens_name,
                        "policy": pol,
                        "test_set": test,
                        "source_biased": test in proto.source_biased,
                        "val_caught": review_metrics(yv, vote.decide(Sv5))["caught"],
                        **review_metrics(y, d),
                        "matrix": mat.tolist(),
                        "thresholds": [round(float(t), 4) for t in vote.thresholds],
                    }
                )
        # The stacker alone, at the target-recall policy fitted on its out-of-fold scores.
        thr = Policy.parse(f"recall:{target:g}").threshold(yv, stack.oof_scores_)
        for test in proto.test_sets:
            y = scores[members[0]][test][0]
            St = np.column_stack([scores[m][test][1] for m in members])
            s = stack.predict_proba(St)[:, 1]
            d = decisions_from_threshold(s, thr)
            rows.append(
                {
                    "protocol": proto.name,
                    "seed": proto.seed,
                    "ensemble": f"{ens_name.split('-')[0]}-stack",
                    "policy": f"recall:{target:g}",
                    "test_set": test,
                    "source_biased": test in proto.source_biased,
                    "val_caught": float((stack.oof_scores_[yv == 1] >= thr).mean()),
                    **review_metrics(y, d),
                    "matrix": review_matrix(y, d).tolist(),
                    "thresholds": [round(thr, 4)],
                    "roc_auc": binary_metrics(y, s, thr)["roc_auc"],
                }
            )
    return rows


def _p(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}%"


def _mean(rows: list[dict], key: str) -> float:
    vals = np.array([r[key] for r in rows], dtype=np.float64)
    return float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")


def _sd(rows: list[dict], key: str) -> float:
    return float(np.nanstd(np.array([r[key] for r in rows], dtype=np.float64)))


def _group(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def plot_strategies(rows: list[dict], path: Path) -> None:
    """Same-source ROC-AUC per model and protocol (mean and std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = [r for r in rows if r["test_set"] == "same-source" and r["policy"] == "youden"]
    protos = list(dict.fromkeys(r["protocol"] for r in sub))
    models = list(dict.fromkeys(r["model"] for r in sub))
    g = _group(sub, "protocol", "model")
    fig, ax = plt.subplots(figsize=(11, 0.28 * len(models) + 1.5))
    h = 0.8 / len(protos)
    for k, proto in enumerate(protos):
        ys = np.arange(len(models)) + k * h
        means = [_mean(g[(proto, m)], "roc_auc") for m in models]
        sds = [_sd(g[(proto, m)], "roc_auc") for m in models]
        ax.barh(ys, means, h, xerr=sds, label=proto, alpha=0.8)
    ax.axvline(0.5, color="k", lw=0.8, ls="--")
    ax.set_yticks(np.arange(len(models)) + 0.4 - h / 2, models, fontsize=7)
    ax.set_xlim(0.3, 0.8)
    ax.set_xlabel("same-source test ROC-AUC (mean +- std over seeds; 0.5 = chance)")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_matrices(rows: list[dict], path: Path) -> None:
    """The summed 2x3 human-review matrices of the votes, same-source test sets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = _group(
        [r for r in rows if r["test_set"] == "same-source" and "vote" in r["ensemble"]],
        "protocol",
        "ensemble",
        "policy",
    )
    keys = list(g)
    cols = 4
    fig, axes = plt.subplots(
        -(-len(keys) // cols), cols, figsize=(3.2 * cols, 2.3 * -(-len(keys) // cols))
    )
    for ax, key in zip(np.ravel(axes), keys, strict=False):
        m = np.sum([np.array(r["matrix"]) for r in g[key]], axis=0)
        ax.imshow(m / np.maximum(m.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=9)
        ax.set_xticks(range(3), ["auto fake", "auto real", "person"], fontsize=7)
        ax.set_yticks(range(2), ["fake", "real"], fontsize=7)
        ax.set_title(" ".join(key), fontsize=8)
    for ax in np.ravel(axes)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(model_rows_, ens_rows, meta) -> str:
    n_seeds = len(meta["seeds"])
    lines = [
        "# The thesis's method on frozen features: imbalance strategies, stacking, voting",
        "",
        f"Command: `{meta['command']}`; seeds {', '.join(map(str, meta['seeds']))} (each its "
        "own split by content hash, 80/10/10 stratified by label x source, and its own draw "
        "of fakes); thresholds and ensembles fitted on validation only; each test set scored "
        f"once per seed. Commit {meta['commit']}; {meta['machine']}; {meta['minutes']:.1f} min. "
        "Every member is a head on frozen ImageNet features (Lite0 or MobileNetV2), not the "
        "thesis's fine-tuned ConvNeXts. Per-seed rows: `reports/thesis-method/*.csv`.",
        "",
        "Single models: every image at or over the threshold goes to a person, so recall is "
        "the share of fakes a person sees and `flagged/10k` the images a person sees per "
        "10,000 applications at a 1:1000 fake rate. Figures are means over the seeds. "
        "Headline = same-source test set (rff reals and rff fakes); the mixed-source P3 "
        "figures (utkface reals beside rff fakes) measure the source as well as the edit.",
        "",
        "![same-source ROC-AUC per strategy](../reports/thesis-method/strategies_auc.png)",
        "",
        "![2x3 matrices of the votes](../reports/thesis-method/vote_matrices.png)",
        "",
    ]
    for proto in meta["protocols"]:
        lines += [f"## {proto}", "", f"Thesis: {THESIS.get(proto, '-')}", ""]
        sub = [r for r in model_rows_ if r["protocol"] == proto and r["test_set"] == "same-source"]
        if not sub:
            continue
        g = _group(sub, "model", "policy")
        first = next(iter(g.values()))
        n, nf = sum(r["n"] for r in first), sum(r["n_fake"] for r in first)
        lines += [
            f"### Every strategy, same-source test sets ({n} images, {nf} fakes over "
            f"{n_seeds} seeds)",
            "",
            "| model | ROC-AUC (sd) | PR-AUC | Youden: recall / precision / FPR "
            f"| {meta['target']}: recall / FPR / flagged/10k "
            f"| {meta['budget']}: recall / flagged/10k |",
            "|---|---|---|---|---|---|",
        ]
        for model in dict.fromkeys(r["model"] for r in sub):
            y_, t_, b_ = (g[(model, p)] for p in ("youden", meta["target"], meta["budget"]))
            lines.append(
                f"| {model} | {_mean(y_, 'roc_auc'):.3f} ({_sd(y_, 'roc_auc'):.3f}) | "
                f"{_mean(y_, 'pr_auc'):.3f} | {_p(_mean(y_, 'recall'))} / "
                f"{_p(_mean(y_, 'precision'))} / {_p(_mean(y_, 'fpr'))} | "
                f"{_p(_mean(t_, 'recall'))} / {_p(_mean(t_, 'fpr'))} / "
                f"{_mean(t_, 'flagged_per_10k'):.0f} | "
                f"{_p(_mean(b_, 'recall'))} / {_mean(b_, 'flagged_per_10k'):.0f} |"
            )
        lines += [
            "",
            "### Ensembles",
            "",
            "Matrix summed over the seeds: rows actual fake, real; columns automatic fake, "
            "automatic real, sent to a person. *caught* = fakes not waved through "
            "(automatic fake or person); *auto recall/precision* = the thesis's figures, on "
            "automatic verdicts only; per-10k figures at a 1:1000 fake rate.",
            "",
            "| ensemble | policy | test set | matrix | val caught | caught | auto recall "
            "| auto precision | to a person | person/10k | flagged/10k | auto errors |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        eg = _group(
            [r for r in ens_rows if r["protocol"] == proto], "ensemble", "policy", "test_set"
        )
        for (ens, pol, test), rs in eg.items():
            m = np.sum([np.array(r["matrix"]) for r in rs], axis=0)
            s = matrix_metrics(m)
            (ff, fr, fv), (rf, rr, rv) = m.tolist()
            biased = " (source-biased)" if rs[0]["source_biased"] else ""
            lines.append(
                f"| {ens} | {pol} | {test}{biased} | [{ff} {fr} {fv}; {rf} {rr} {rv}] | "
                f"{_p(_mean(rs, 'val_caught'))} | {_p(s['caught'])} | {_p(s['auto_recall'])} | "
                f"{_p(s['auto_precision'])} | {_p(s['review_share'])} | "
                f"{_mean(rs, 'review_per_10k'):.0f} | {_mean(rs, 'flagged_per_10k'):.0f} | "
                f"{s['auto_errors']} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--protocols", default="P2,P3,P3-212")
    ap.add_argument("--target-recall", type=float, default=0.97)
    ap.add_argument("--review-budget", type=float, default=0.015)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "thesis-method")
    ap.add_argument("--md", type=Path, default=ROOT / "benchmarks" / "thesis_method.md")
    args = ap.parse_args()
    t0 = time.perf_counter()
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    seeds = [int(x) for x in args.seeds.split(",")]
    ds = load_dataset(args.data)
    cache = FeatureCache()
    feats = {
        bb: extract_all(ds, FeatureExtractor(load_backbone(name), cache, progress=False))[0]
        for bb, name in BACKBONES.items()
    }
    target, budget = f"recall:{args.target_recall:g}", f"budget:{args.review_budget:g}"
    mrows, erows = [], []
    for seed in seeds:
        for name in args.protocols.split(","):
            proto = build(name, ds, seed)
            scores = fit_members(proto, feats, seed)
            mrows += model_rows(proto, scores, ["youden", target, budget])
            erows += ensemble_rows(proto, scores, args.target_recall, seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "strategies.csv", mrows, fields=None)
    write_csv(args.out / "ensembles.csv", erows, fields=None)
    plot_strategies(mrows, args.out / "strategies_auc.png")
    plot_matrices(erows, args.out / "vote_matrices.png")
    meta = {
        "command": "python benchmarks/thesis_method.py"
        + (f" --seeds {args.seeds}" if args.seeds != "0,1,2,3,4" else ""),
        "seeds": seeds,
        "commit": git_commit(),
        "machine": machine_description(),
        "minutes": (time.perf_counter() - t0) / 60,
        "protocols": args.protocols.split(","),
        "target": target,
        "budget": budget,
    }
    args.md.write_text(markdown(mrows, erows, meta))
    print(f"wrote {args.md}, {args.out}/strategies.csv, {args.out}/ensembles.csv")


if __name__ == "__main__":
    main()
