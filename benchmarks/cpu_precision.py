"""CLIP layer 8 in fp32, bf16 and INT8 on this CPU: speed, drift and verdicts, in one run
(issue 30).

    python benchmarks/cpu_precision.py [--data ../shared/data] [--seed 0] [--folds 5]

Which numeric path is fastest, and which is exact enough, depends on the CPU's instruction
sets (``facecheck.backbones.cpu``): u8 x s8 INT8 products saturate on AVX2 alone and are exact with
VNNI; bf16 is native with AVX-512 BF16 or AMX and emulated (slow) elsewhere. So every run
names the CPU and its sets, and the variants it cannot run natively are marked.

Variants (``variants()``), each the shipped backbone ``clip_vit_b16_l8`` with its shipped
view (class token + the four regions' pooled patch tokens) and face stage:

- fp32 in ONNX Runtime (what every machine ran until now; the reference);
- bf16: PyTorch autocast (products in bfloat16, accumulated in fp32);
- INT8, dynamic quantisation in ONNX Runtime, one image per call, q/k/v/out + fc1 in 8 bits
  (fc2, whose input has outlier channels, stays fp32): u8 weights one scale per tensor (the
  library's ``clip_vit_b16_l8_int8_attn_fc1``, exact on every CPU), and s8 weights per
  channel (u8 x s8: exact only with VNNI).

Per variant:

- speed: batch-1 pass p50 of 25 after warm-ups, and batch-4 throughput (pass only), the
  variants interleaved so a change in the machine's load hits all alike;
- drift: cosine to fp32 on P1 test (class token; region-pooled tokens, mean and 1st pct);
- P1, the serving question: the logistic head fitted per fold on *fp32* features and
  applied to the variant's (the shipped bundle is fitted on fp32 features), 5-fold CV over
  P1 train + val grouped by content hash, paired bootstrap against fp32 on the same
  out-of-fold scores; and, for reference, the head refitted on the variant's own features;
- the shipped bundle itself on ALL's test split (seed 0: the images it never trained on):
  paired ROC-AUC difference on the rff same-source headline and on the whole split, and
  how many verdicts at its threshold differ from fp32's.

A variant is *as accurate* when the paired P1 and ALL differences' 95% CIs lie within
±0.005 and at most 1% of ALL test verdicts change (the issue's tolerance); the load-time
choice (``facecheck.backbones.cpu.resolve_precision``) follows this table.

Writes benchmarks/cpu_precision.md and .json. Cold cache: ~3,150 images per variant
(about 8 minutes each on 2 cores), then ~90 s of head fitting per variant.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from clip_ort_int8 import cosines
from clip_p1 import (
    cv_arguments,
    cv_figures,
    cv_result,
    format_paired,
    p1_folds,
    provenance,
    write_result,
)
from facecheck.backbones.clip import INT8_NO_FC2, load_clip, onnx_file
from facecheck.backbones.cpu import has_bf16, has_vnni, instruction_sets
from facecheck.backbones.registry import Backbone, load_backbone
from facecheck.detector.bundle import default_bundle_path
from facecheck.detector.pipeline import Detector
from facecheck.evaluation.metrics import paired_auc_difference
from facecheck.evaluation.protocols import all_sources
from facecheck.features.cache import FeatureCache
from facecheck.features.extract import FeatureExtractor
from facecheck.heads.models import make_head

HERE = Path(__file__).resolve().parent
BASE = "clip_vit_b16_l8"
TOLERANCE_AUC, TOLERANCE_VERDICTS = 0.005, 0.01


@dataclass
class Variant:
    name: str
    precision: str
    int8: tuple[str, ...] = ()
    int8_weights: str = "u8"

    @property
    def native(self) -> bool:
        """Whether this CPU runs it natively (else emulated or saturating)."""
        if self.precision == "bf16":
            return has_bf16()
        return not self.int8 or self.int8_weights == "u8" or has_vnni()


def variants() -> list[Variant]:
    return [
        Variant("fp32 (ONNX Runtime; shipped)", "fp32"),
        Variant("bf16 (PyTorch autocast)", "bf16"),
        Variant("int8 u8 weights, q/k/v/out + fc1", "fp32", INT8_NO_FC2, "u8"),
        Variant("int8 s8 per-channel, q/k/v/out + fc1", "fp32", INT8_NO_FC2, "s8-pc"),
    ]


def backbone(v: Variant) -> Backbone:
    """The shipped backbone, with this variant's INT8 layers (a registry entry only for the
    library's u8 one: the others are measured here, not offered)."""
    bb = load_backbone(BASE)
    if v.int8:
        model = load_clip(onnx_file(), (8,), v.int8, int8_weights=v.int8_weights)
        for p in model.parameters():
            p.requires_grad_(False)
        bb = Backbone(
            bb.name, model, bb.preprocessing, bb.dim, bb.weights_id, bb.weights_source, bb.licence
        )
    return bb


def speed(extractors: dict[str, FeatureExtractor], x: torch.Tensor, repeats: int = 25) -> dict:
    """Batch-1 pass p50 (ms) and batch-4 images/s per variant, interleaved."""
    one: dict[str, list[float]] = {k: [] for k in extractors}
    four: dict[str, list[float]] = {k: [] for k in extractors}
    with torch.inference_mode():
        for ex in extractors.values():  # warm-up (and the INT8 graphs' quantisation)
            for _ in range(2):
                ex.backbone.features_and_map(x[:1])
        for _ in range(repeats):
            for k, ex in extractors.items():
                t = time.perf_counter()
                ex.backbone.features_and_map(x[:1])
                one[k].append(time.perf_counter() - t)
        for _ in range(max(3, repeats // 5)):
            for k, ex in extractors.items():
                t = time.perf_counter()
                ex.backbone.features_and_map(x[:4])
                four[k].append(time.perf_counter() - t)
    return {
        k: {
            "pass_ms": round(1000 * float(np.median(one[k])), 1),
            "images_per_s_batch4": round(4 / float(np.median(four[k])), 2),
        }
        for k in extractors
    }


def heads_on(Ffit: np.ndarray, Fscore: np.ndarray, Ft_score: np.ndarray, cv, seed: int):
    """Out-of-fold and test scores of logistic heads fitted per fold on the pool rows
    ``Ffit`` and applied to ``Fscore`` / ``Ft_score``: fp32 rows fitted and a variant's
    scored is the serving question; a variant's own rows both ways, the refitted head."""
    ok = ~np.isnan(Ffit).any(axis=1) & ~np.isnan(Fscore).any(axis=1)
    oof = np.full(len(Fscore), np.nan)
    for f in range(int(cv.folds.max()) + 1):
        tr, te = (cv.folds != f) & ok, (cv.folds == f) & ok
        head = make_head("logreg", seed=seed).fit(Ffit[tr], cv.y[tr])
        oof[te] = head.predict_proba(Fscore[te])[:, 1]
    st = np.full(len(Ft_score), np.nan)
    okt = ~np.isnan(Ft_score).any(axis=1)
    head = make_head("logreg", seed=seed).fit(Ffit[ok], cv.y[ok])
    st[okt] = head.predict_proba(Ft_score[okt])[:, 1]
    return oof, st


def main() -> None:
    args = cv_arguments(__doc__.split("\n")[0], HERE / "cpu_precision.md").parse_args()
    t0 = time.perf_counter()
    cv = p1_folds(args.data, args.seed, args.folds)
    det = Detector.load(default_bundle_path())
    if det.backbone_name != BASE:
        raise SystemExit(f"the shipped bundle's backbone is {det.backbone_name}, not {BASE}")
    shipped = det.extractor  # its view and face stage, as served
    cache = FeatureCache()
    extractors = {
        v.name: FeatureExtractor(
            backbone(v),
            cache,
            face_stage=shipped.face_stage,
            view=shipped.view,
            precision=v.precision,
        )
        for v in variants()
    }
    proto = all_sources(cv.ds, args.seed)
    all_test = list(proto.split.test)
    rff = np.array([r.source == "rff" for r in all_test])
    y_all = np.array([r.y for r in all_test])

    def rows(ex: FeatureExtractor, records) -> np.ndarray:
        return ex.extract([r.path for r in records], [r.sha256 for r in records]).features

    feats = {}
    for name, ex in extractors.items():
        print(name, "extracting", flush=True)
        feats[name] = (rows(ex, cv.pool), rows(ex, cv.test), rows(ex, all_test))

    x = torch.stack(
        [shipped.backbone.preprocessing(_image(r.path)) for r in cv.test[:4]]  # real faces
    )
    fast = speed(extractors, x)
    print("speed", fast, flush=True)

    ref = next(iter(feats))
    Fp_ref, Ft_ref, Fa_ref = feats[ref]
    ref_all = _scores(det, Fa_ref)
    ref_oof, _ = heads_on(Fp_ref, Fp_ref, Ft_ref, cv, args.seed)
    out: dict[str, dict] = {}
    for v in variants():
        Fp, Ft, Fa = feats[v.name]
        oof, st = heads_on(Fp_ref, Fp, Ft, cv, args.seed)
        r_oof, r_st = heads_on(Fp, Fp, Ft, cv, args.seed)
        s_all = _scores(det, Fa)
        ok = ~np.isnan(oof) & ~np.isnan(ref_oof)
        oka = ~np.isnan(s_all) & ~np.isnan(ref_all)
        flips = int(((s_all >= det.threshold) != (ref_all >= det.threshold))[oka].sum())
        row = {
            "native": v.native,
            **fast[v.name],
            "drift": cosines(Ft, Ft_ref),
            "fp32_head": cv_figures(oof, st, cv, args.seed),
            "refit": cv_figures(r_oof, r_st, cv, args.seed),
            "shipped_all": {
                "verdicts_changed": flips,
                "images": int(oka.sum()),
                "max_abs_score_change": float(np.abs(s_all - ref_all)[oka].max()),
            },
        }
        if v.name != ref:
            row["paired"] = {
                "p1_out_of_fold_fp32_head": paired_auc_difference(
                    cv.y[ok], ref_oof[ok], oof[ok], seed=args.seed
                ),
                "all_rff_same_source": paired_auc_difference(
                    y_all[oka & rff], ref_all[oka & rff], s_all[oka & rff], seed=args.seed
                ),
                "all_test": paired_auc_difference(
                    y_all[oka], ref_all[oka], s_all[oka], seed=args.seed
                ),
            }
            row["as_accurate"] = _as_accurate(row)
        out[v.name] = row
        print(v.name, {k: row[k] for k in ("drift", "shipped_all")}, flush=True)

    result = cv_result(
        args,
        cv,
        t0,
        out,
        len(cv.pool),
        onnxruntime=ort.__version__,
        instruction_sets=instruction_sets(),
        all_test_images=len(all_test),
        threshold=det.threshold,
        tolerance={"auc": TOLERANCE_AUC, "verdicts": TOLERANCE_VERDICTS},
    )
    write_result(args.out, result, render)


def _image(path: str):
    from PIL import Image

    return Image.open(path).convert("RGB")


def _scores(det: Detector, F: np.ndarray) -> np.ndarray:
    s = np.full(len(F), np.nan)
    ok = ~np.isnan(F).any(axis=1)
    s[ok] = det.score_features(F[ok])
    return s


def _as_accurate(row: dict) -> bool:
    """Both paired CIs within the AUC tolerance and few enough verdicts changed."""
    within = all(
        abs(row["paired"][k][end]) <= TOLERANCE_AUC
        for end in ("ci_lo", "ci_hi")
        for k in ("p1_out_of_fold_fp32_head", "all_rff_same_source")
    )
    changed = row["shipped_all"]["verdicts_changed"] / max(row["shipped_all"]["images"], 1)
    return within and changed <= TOLERANCE_VERDICTS


def render(r: dict) -> str:
    tol = r["tolerance"]
    lines = [
        "# CLIP layer 8 in fp32, bf16 and INT8 on this CPU (issue 30)",
        "",
        provenance(r, "cpu_precision.py", f"onnxruntime {r['onnxruntime']}; ")
        + f" Instruction sets: **{r['instruction_sets']}**. A variant marked *emulated* "
        "has no native kernels on this CPU (bf16 without AVX-512 BF16 / AMX; u8 x s8 INT8 "
        "without VNNI, where its products saturate): its row says what it costs here, not "
        "what it would elsewhere.",
        "",
        "## Speed and drift",
        "",
        "Pass only (no decode, no face stage), the variants interleaved; drift: cosine "
        "to fp32 on P1 test (class token; region-pooled tokens, mean and 1st percentile).",
        "",
        "| variant | native here | batch-1 pass p50 (ms) | batch 4 (images/s) "
        "| drift: image mean / min | drift: regions mean / p1 |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in r["variants"].items():
        d = v["drift"]
        lines.append(
            f"| {name} | {'yes' if v['native'] else 'emulated'} | {v['pass_ms']} "
            f"| {v['images_per_s_batch4']} | {d['image_mean']:.4f} / {d['image_min']:.4f} "
            f"| {d['regions_mean']:.4f} / {d['regions_p1']:.4f} |"
        )
    lines += [
        "",
        "## Detection",
        "",
        "P1 (5-fold CV, hash-grouped): the logistic head fitted on fp32 features and applied "
        "to the variant's (what serving the shipped bundle on this path means), and refitted "
        "on the variant's own features. ALL test: the shipped bundle's scores on the "
        f"{r['all_test_images']} test images of its own split (seed {r['seed']}), verdicts "
        f"at its threshold {r['threshold']:.4f} compared with fp32's. Paired: ROC-AUC "
        "difference, variant minus fp32, 95% paired bootstrap CI (share of draws lower). "
        f"As accurate: both paired CIs within ±{tol['auc']} and at most "
        f"{tol['verdicts']:.0%} of ALL's verdicts changed.",
        "",
        "| variant | P1 CV, fp32 head | P1 CV, refitted | paired P1 (fp32 head) "
        "| paired ALL rff same-source | paired ALL test | ALL verdicts changed "
        "| max score change | as accurate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def diff(d: dict | None) -> str:
        return format_paired(d, empty="-", long=False)

    for name, v in r["variants"].items():
        p, s = v.get("paired", {}), v["shipped_all"]
        a, b = v["fp32_head"]["cv_auc"], v["refit"]["cv_auc"]
        verdict = {True: "**yes**", False: "no"}.get(v.get("as_accurate"), "(reference)")
        lines.append(
            f"| {name} | {a[0]:.4f} ± {a[1]:.4f} | {b[0]:.4f} ± {b[1]:.4f} "
            f"| {diff(p.get('p1_out_of_fold_fp32_head'))} "
            f"| {diff(p.get('all_rff_same_source'))} | {diff(p.get('all_test'))} "
            f"| {s['verdicts_changed']} of {s['images']} | {s['max_abs_score_change']:.4f} "
            f"| {verdict} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
