"""The token head on every protocol (issue 9): ALL's headline, P7 and P4, paired with the
shipped recipe.

    python benchmarks/token_all.py [--data ../shared/data] [--seed 0] [--attend all]
        [--protocols ALL,P7-HARD,P7-UTKFACE,P7-RFF]

Both detectors read one pass of CLIP ViT-B/16 cut after layer 8 over the shipped face crops:

- ``shipped``: the logistic head (C by inner CV) on the class token and the patch tokens
  pooled in the four region boxes (``facecheck train --head-input image+regions``);
- ``tokens``: :class:`facecheck.heads.models.TokenMILHead` (``--head tokenmil --head-input
  tokens``): the region-MIL head on those, and gated attention over all 196 patch tokens
  taught the region bits, fused by the mean of their logits (on P1 by CV 0.967 against
  0.956, ``benchmarks/token_mil.md``); ``--attend boxes``: its attention only over the
  cells under the four region boxes (``token_boxes.md``).

Each protocol as ``facecheck evaluate`` runs it
(:func:`facecheck.evaluation.evaluate.evaluate_protocol`):
both heads fitted on its train split, the threshold chosen on its validation split by the
bundle's rule (at most 10% of each real source's validation reals flagged), every test set
scored once. Each test set's ROC-AUC difference (tokens minus shipped) on the same images
comes with a 95% paired bootstrap CI. The figures are written after every protocol, so a
run cut short keeps what it finished. The GAN protocols (P4, P7-TPDNE, P7-FAKEFACES) are
not in the default list: the shipped head is at 0.998-1.000 there, and each costs ~10 min
of token training on 2 CPU cores (``--protocols ALL,P7,P4`` runs them all).

The token rows (float16, ~300 KB per image, ~4 GB for the 13,286 images) are cached in the
feature cache; extracting them costs ~45 min on 2 CPU cores. Writes benchmarks/token_all.md
and .json (``--attend boxes``: token_boxes.md and .json).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from clip_p1 import format_paired, write_result
from facecheck.backbones.registry import face_stage_for, load_backbone
from facecheck.detector.pipeline import head_view
from facecheck.evaluation.data import load_dataset
from facecheck.evaluation.evaluate import ModelResult, evaluate_protocol, extract_all
from facecheck.evaluation.metrics import paired_auc_difference
from facecheck.evaluation.protocols import build, expand
from facecheck.evaluation.report import git_commit, machine_description
from facecheck.features.cache import FeatureCache
from facecheck.features.extract import FeatureExtractor

HERE = Path(__file__).resolve().parent
BACKBONE = "clip_vit_b16_l8"
RULE = "fpr:0.1"
FIGURES = ("roc_auc", "recall", "fpr", "precision")


def summary(r: ModelResult, test: str) -> dict:
    t = r.tests[test]
    return {
        **{k: round(float(t.at_val[k]), 4) for k in FIGURES},
        "roc_auc_ci": [round(float(v), 4) for v in t.ci.get("roc_auc", (float("nan"),) * 2)],
        "recall_at_10fpr": round(float(t.recall_at_10fpr), 4),
    }


def compare(shipped: ModelResult, tokens: ModelResult, seed: int) -> dict:
    """Both models' figures on each test set, and the paired ROC-AUC difference."""
    out = {}
    for test, a in shipped.tests.items():
        b = tokens.tests[test]
        # Both views come from the same face decisions: the same images in the same order.
        if len(a.y) != len(b.y) or (a.y != b.y).any():
            raise RuntimeError(f"{shipped.protocol}/{test}: the two models scored other images")
        out[test] = {
            "images": len(a.y),
            "fakes": int(a.y.sum()),
            "shipped": summary(shipped, test),
            "tokens": summary(tokens, test),
            "paired": paired_auc_difference(a.y, a.score, b.score, seed=seed)
            if 0 < a.y.sum() < len(a.y)
            else None,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--seed", type=int, default=0)
    # ALL's headline first, then the unseen sources.
    ap.add_argument("--protocols", default="ALL,P7-HARD,P7-UTKFACE,P7-RFF")
    ap.add_argument("--attend", choices=["all", "boxes"], default="all")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or HERE / ("token_all.md" if args.attend == "all" else "token_boxes.md")
    t0 = time.perf_counter()
    ds = load_dataset(args.data)
    protocols = [build(p, ds, args.seed) for p in expand(args.protocols.split(","))]
    cache, bb = FeatureCache(), load_backbone(BACKBONE)
    stage = face_stage_for(BACKBONE, "auto")
    views = {"shipped": head_view(bb, "image+regions"), "tokens": head_view(bb, "tokens")}
    feats, errors = {}, {}
    for name, view in views.items():
        ex = FeatureExtractor(bb, cache, face_stage=stage, view=view)
        feats[name], errors[name] = extract_all(ds, ex)
    print(f"features ready, {time.perf_counter() - t0:.0f} s", flush=True)

    result = {
        "seed": args.seed,
        "rule": RULE,
        "attend": args.attend,
        "commit": git_commit(),
        "machine": machine_description(),
        "images": len(ds),
        "left_out": len(errors["tokens"]),
        "protocols": {},
    }
    for proto in protocols:
        common = {"tta": False, "rule": RULE, "n_boot": args.n_boot, "seed": args.seed}
        (shipped,) = evaluate_protocol(
            proto, feats["shipped"], backbone=f"{BACKBONE}+regions", heads=["logreg"], **common
        )
        (tokens,) = evaluate_protocol(
            proto,
            feats["tokens"],
            backbone=f"{BACKBONE}+tokens",
            heads=["tokenmil"],
            head_params={"dim": bb.dim, "attend": args.attend},
            **common,
        )
        result["protocols"][proto.name] = {
            "headline": proto.headline,
            "train": len(proto.split.train),
            "fit_seconds": {"shipped": shipped.fit_seconds, "tokens": tokens.fit_seconds},
            "tests": compare(shipped, tokens, args.seed),
        }
        result["seconds"] = round(time.perf_counter() - t0, 1)
        head = result["protocols"][proto.name]["tests"][proto.headline]
        print(proto.name, format_paired(head["paired"], long=True), flush=True)
        write_result(out, result, render)


def render(r: dict) -> str:
    boxes = r.get("attend") == "boxes"
    where = "the cells under the four region boxes" if boxes else "all 196 patch tokens"
    lines = [
        "# The token head on every protocol (issue 9)" + (": attention in the boxes" * boxes),
        "",
        f"`python benchmarks/token_all.py{' --attend boxes' * boxes}` (seed {r['seed']}; "
        f"commit {r['commit']}; "
        f"{r['machine']}; {r['seconds'] / 60:.0f} min; {r['images']} images, "
        f"{r['left_out']} left out by the face stage). CLIP ViT-B/16 cut after layer 8, one "
        "pass; **shipped**: logistic head on the class token + the regions' pooled tokens; "
        f"**tokens**: `tokenmil` (region-MIL on those + attention over {where}, "
        "mean logit). Each protocol's split by content hash; threshold on validation "
        f"(`{r['rule']}`: at most 10% of each real source's validation reals flagged); each "
        "test set scored once. Δ: tokens minus shipped ROC-AUC on the same images, 95% "
        "paired bootstrap CI (share of draws below 0). Headline test sets in bold.",
        "",
        "| protocol | test set | images (fakes) | ROC-AUC shipped | ROC-AUC tokens | Δ "
        "| recall shipped / tokens | FPR shipped / tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, p in r["protocols"].items():
        for test, t in p["tests"].items():
            a, b = t["shipped"], t["tokens"]
            bold = "**" if test == p["headline"] else ""
            lines.append(
                f"| {name} | {bold}{test}{bold} | {t['images']} ({t['fakes']}) "
                f"| {a['roc_auc']:.3f} | {b['roc_auc']:.3f} "
                f"| {format_paired(t['paired'], empty='n/a')} "
                f"| {a['recall']:.3f} / {b['recall']:.3f} | {a['fpr']:.3f} / {b['fpr']:.3f} |"
            )
    if r.get("note"):
        lines += ["", r["note"]]
    lines += [
        "",
        "Seconds to fit on each protocol's train split (2 CPU cores): "
        + "; ".join(
            f"{n} ({p['train']} images) {p['fit_seconds']['shipped']:.0f} / "
            f"{p['fit_seconds']['tokens']:.0f}"
            for n, p in r["protocols"].items()
        )
        + " (shipped / tokens).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
