"""How deep must CLIP go? Detection by encoder layer, and the pass's latency by depth
(issue 6's 200 ms goal, issue 9's accuracy).

    python benchmarks/clip_depth.py [--data ../shared/data] [--seed 0] [--folds 5]

The shipped detector reads CLIP ViT-B/16's class tokens of encoder layers 8 and 12 and the
same layers' patch tokens pooled in the four region boxes (one pass). A pass that stops at
layer L costs about L/12 of the whole, so if the early layers carry the evidence the
backbone can be cut there. One pass over P1's images (train + val + test) keeps every
layer's class token and region-pooled patch tokens (``PooledRegionView(with_image=True)`` on
``ClipVision(1..12)``; the layers 8 + 12 slice is the shipped input exactly), then:

- **accuracy by layer set**: the shipped logistic head (C by inner 3-fold ROC-AUC) on the
  image part alone and on image + regions, by 5-fold CV over P1's train + val (stratified,
  grouped by content hash, seeded), then refitted on train + val and P1's test split scored
  once (95% bootstrap CI); the region-MIL head (region weight 1) on the sets named in
  ``MIL_SETS`` (none in the recorded run: its 8 + 12 figures are region_mil.md's);
- **latency by depth**: one batch-1 pass that returns the class tokens and the patch-token
  map of the layers read, p50 of 20 after 3 warm-ups, in PyTorch (eager, fp32) and in ONNX
  Runtime (the same module exported to ONNX, fp32, all graph optimisations), on the
  machine's cores. ``--latency-only`` re-measures these alone into the existing results
  (the head fits share the cores, so time them on a quiet machine).

Writes benchmarks/clip_depth.md and .json. About 15 minutes of CLIP extraction on 2 CPU cores
when the cache is cold, then about 20 minutes of head fits.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clip_p1 import cross_validate, cv_arguments, p1_folds, provenance, write_result
from facecheck.backbones.clip import LAYERS, WIDTH, ClipVision, load_clip
from facecheck.backbones.registry import _REGISTRY, BackboneEntry, load_backbone, register_backbone
from facecheck.evaluation.data import region_bits
from facecheck.evaluation.report import git_commit, machine_description
from facecheck.features.cache import FeatureCache
from facecheck.features.extract import FeatureExtractor
from facecheck.features.views import PooledRegionView
from facecheck.heads.models import RegionMILHead, make_head
from facecheck.image.faces import FaceStage
from facecheck.image.regions import REGIONS

HERE = Path(__file__).resolve().parent
ALL = tuple(range(1, LAYERS + 1))  # extracted once; the sets below read slices of it
LAYER_SETS: dict[str, tuple[int, ...]] = {
    "8 + 12 (shipped before)": (8, 12),
    "12": (12,),
    "8 (shipped)": (8,),
    "6": (6,),
    "6 + 8": (6, 8),
}
MIL_SETS: tuple[str, ...] = ()  # the region-MIL head on 8 + 12: benchmarks/region_mil.md
DEPTHS = (4, 6, 8, 10, 12)


def register_all_layers() -> str:
    """A backbone that keeps every encoder layer's tokens (this script's only)."""
    name = "clip_vit_b16_all_layers"
    base = _REGISTRY["clip_vit_b16_layers"]
    register_backbone(
        name,
        BackboneEntry(
            builder=lambda: ClipVision(ALL),
            default_weights=base.default_weights,
            preprocessing=base.preprocessing,
            dim=WIDTH * LAYERS,
            licence=base.licence,
            install_hint=base.install_hint,
            description="CLIP ViT-B/16 class tokens of all 12 encoder layers",
            loader=lambda path: load_clip(path, ALL),
        ),
    )
    return name


def select(F: np.ndarray, layers: tuple[int, ...], parts: int) -> np.ndarray:
    """Columns of ``layers`` from the first ``parts`` parts (image, then the regions)."""
    cube = F.reshape(len(F), 1 + len(REGIONS), LAYERS, WIDTH)[:, :parts]
    return cube[:, :, [k - 1 for k in layers]].reshape(len(F), -1)


class _Pass(torch.nn.Module):
    """Class tokens and patch tokens of the layers read: what one detector pass computes."""

    def __init__(self, model: ClipVision):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.model._tokens(x, class_only=False)
        return t[:, 0], t[:, 1:]


def p50_ms(run, repeats: int = 20) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return round(1000 * float(np.median(times)), 1)


def latency(weights: Path) -> dict[str, dict[str, float]]:
    """Batch-1 pass p50 by depth: PyTorch eager and ONNX Runtime, fp32."""
    import onnxruntime as ort

    x = torch.randn(1, 3, 224, 224)
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for depth in DEPTHS:
            layers = (depth,) if depth <= 8 else (8, depth)
            module = _Pass(load_clip(weights, layers))
            with torch.inference_mode():
                eager = p50_ms(lambda m=module: m(x))
                ref = module(x)[0].numpy()
            path = Path(tmp) / f"clip{depth}.onnx"
            torch.onnx.export(module, (x,), path, input_names=["x"], dynamo=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            feed = {"x": x.numpy()}
            drift = float(np.abs(session.run(None, feed)[0] - ref).max())
            out[str(depth)] = {
                "layers": list(layers),
                "torch_ms": eager,
                "onnxruntime_ms": p50_ms(lambda s=session, f=feed: s.run(None, f)),
                "onnxruntime_max_abs_diff": drift,
            }
            print("depth", depth, out[str(depth)], flush=True)
    return out


def main() -> None:
    ap = cv_arguments(__doc__.split("\n")[0], HERE / "clip_depth.md")
    ap.add_argument(
        "--latency-only",
        action="store_true",
        help="re-measure the latencies alone (on a quiet machine) into the existing .json",
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.latency_only:
        result = json.loads(args.out.with_suffix(".json").read_text())
        result["latency"] = latency(Path(load_backbone("clip_vit_b16_l8").weights_source))
        result["latency_commit"] = git_commit()
        write_result(args.out, result, render)
        return

    cv = p1_folds(args.data, args.seed, args.folds)
    pool, test = cv.pool, cv.test
    backbone = load_backbone(register_all_layers())
    ex = FeatureExtractor(
        backbone, FeatureCache(), face_stage=FaceStage(), view=PooledRegionView(with_image=True)
    )

    def feats(records) -> np.ndarray:
        return ex.extract([r.path for r in records], [r.sha256 for r in records]).features

    Fp, Ft = feats(pool), feats(test)
    ok_p, ok_t = ~np.isnan(Fp).any(axis=1), ~np.isnan(Ft).any(axis=1)
    Rp = region_bits(pool)
    print(f"features: {Fp.shape}, {time.perf_counter() - t0:.0f} s", flush=True)

    def evaluate(make, layers: tuple[int, ...], parts: int, with_regions: bool) -> dict:
        Xp, Xt = select(Fp, layers, parts), select(Ft, layers, parts)
        return cross_validate(make, Xp, Xt, cv, args.seed, Rp if with_regions else None).row

    def logistic():
        return make_head("logreg", seed=args.seed)

    def mil():
        return RegionMILHead(region_weight=1.0, seed=args.seed)

    results: dict[str, dict] = {}
    for name, layers in LAYER_SETS.items():
        tv = time.perf_counter()
        row = {
            "layers": list(layers),
            "depth": max(layers),
            "image": evaluate(logistic, layers, 1, False),
            "image+regions": evaluate(logistic, layers, 1 + len(REGIONS), False),
        }
        if name in MIL_SETS:
            row["regionmil"] = evaluate(mil, layers, 1 + len(REGIONS), True)
        row["seconds"] = round(time.perf_counter() - tv, 1)
        results[name] = row
        print(name, {k: v["cv_auc"] for k, v in row.items() if isinstance(v, dict)}, flush=True)

    result = {
        "seed": args.seed,
        "folds": args.folds,
        "images": {"pool": int(ok_p.sum()), "test": int(ok_t.sum())},
        "commit": git_commit(),
        "machine": machine_description(),
        "latency": latency(Path(backbone.weights_source)),
        "seconds": round(time.perf_counter() - t0, 1),
        "sets": results,
    }
    write_result(args.out, result, render)


def render(r: dict) -> str:
    def cell(v: dict | None) -> str:
        if v is None:
            return "-"
        return f"{v['cv_auc'][0]:.3f} ± {v['cv_auc'][1]:.3f}"

    def test(v: dict) -> str:
        ci = v["test_auc_ci"]
        return f"{v['test_auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"

    lines = [
        "# How deep must CLIP go? Detection by encoder layer and latency by depth",
        "",
        provenance(r, "clip_depth.py") + " Features: CLIP ViT-B/16's post-layer-norm class token "
        "of each listed encoder layer (image), and the same layers' patch tokens pooled in "
        "the four region boxes (regions), one pass. Heads: the shipped logistic head (C by "
        "inner 3-fold ROC-AUC) and the region-MIL head (region weight 1). See the script's "
        "docstring.",
        "",
        "## Detection (P1 ROC-AUC)",
        "",
        "| layers | depth | logistic, image: CV | logistic, image + regions: CV "
        "| regionmil: CV | image + regions: CV recall @ 10% FPR | image + regions: test [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in r["sets"].items():
        ir = s["image+regions"]
        lines.append(
            f"| {name} | {s['depth']} | {cell(s['image'])} | {cell(ir)} "
            f"| {cell(s.get('regionmil'))} | {ir['cv_recall_at_10fpr'][0]:.3f} | {test(ir)} |"
        )
    base = np.array(next(iter(r["sets"].values()))["image+regions"]["cv_auc_folds"])
    lines += [
        "",
        "Paired by fold against the first row (image + regions; the folds are shared):",
        "",
        "| layers | Δ CV ROC-AUC | folds better |",
        "|---|---|---|",
    ]
    for name, s in list(r["sets"].items())[1:]:
        d = np.array(s["image+regions"]["cv_auc_folds"]) - base
        lines.append(
            f"| {name} | {d.mean():+.4f} ± {d.std():.4f} | {int((d > 0).sum())}/{len(d)} |"
        )
    mil = [(n, s["regionmil"]) for n, s in r["sets"].items() if "regionmil" in s]
    if mil:
        lines += ["", "Region-MIL head (region weight 1), test once:", ""]
        lines += [f"- {n}: CV {cell(v)}, test {test(v)}" for n, v in mil]
    lines += [
        "",
        "## Latency of one pass by depth (batch 1, p50 of 20)",
        "",
        "| depth | layers read | PyTorch eager, ms | ONNX Runtime, ms | ORT max abs diff |",
        "|---|---|---|---|---|",
    ]
    for depth, v in r["latency"].items():
        lines.append(
            f"| {depth} | {' + '.join(map(str, v['layers']))} | {v['torch_ms']} "
            f"| {v['onnxruntime_ms']} | {v['onnxruntime_max_abs_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
