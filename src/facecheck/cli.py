"""``facecheck``: train a detector, evaluate the protocols, check images.

A thin layer: every command goes through :mod:`facecheck.pipeline`, :mod:`facecheck.data`
and :mod:`facecheck.report`; nothing here decodes, crops or thresholds on its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path("../shared/data")
EPILOG = """\
examples:
  facecheck check selfie.jpg id_photo.png          score images with the shipped detector
  facecheck check --json *.jpg                     one JSON object per image, for machines
  facecheck train --data ../shared/data --protocol P1 --out models/p1
  facecheck calibrate --max-fpr 0.05 --out models/ours our_photos/   threshold for your photos
  facecheck evaluate --data ../shared/data --protocols P1,P2,P3,P3-212,P4
  facecheck backbones                              list the feature extractors
  facecheck serve                                  scoring API + review queue on :8000
  facecheck feedback export --out fb/              reviewed cases as training data

Fake is the positive class. Thresholds are chosen on the validation split only (or on a
deployment's own photos, by `calibrate`); the test split is scored once, by `evaluate`.
See README.md for the protocols (P1-P7)."""


def _head_input_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--head-input",
        choices=["image", "image+regions", "tokens"],
        default="image",
        help="what the head reads: the picture's features (default); those and the four "
        "regions' pooled features from the same pass (region-aware; the shipped CLIP "
        "detector's choice, see benchmarks/clip_p1.md); or those and every patch token "
        "(for --head tokenmil: attention over the tokens, ~300 KB of cache per image, see "
        "benchmarks/token_mil.md)",
    )


def _face_stage_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--face-stage",
        default="auto",
        choices=["auto", "align", "off"],
        help="auto (default): tight crops pass through, smaller faces are found and aligned, "
        "pictures with no face or several are left out; align: re-crop every face; off: "
        "score pictures as given",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="feature cache folder (default: $FACECHECK_CACHE or ~/.cache/facecheck)",
    )
    p.add_argument("--seed", type=int, default=0, help="split/draw/training seed (default 0)")
    p.add_argument("--tta", action="store_true", help="average features with a horizontal flip")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument(
        "--threshold-rule",
        default="youden",
        help="how the validation split picks the threshold: youden (default), f1, "
        "recall:0.97, budget:0.015 or fpr:0.1 (at most 10%% of each real source's "
        "validation reals flagged)",
    )
    rule.add_argument(
        "--max-fpr",
        type=float,
        metavar="F",
        help="policy: flag at most F of each real source's validation reals, the fakes "
        "playing no part (same as --threshold-rule fpr:F)",
    )
    rule.add_argument(
        "--target-recall",
        type=float,
        metavar="R",
        help="policy: the threshold that catches at least R of the validation fakes with "
        "the fewest flags (same as --threshold-rule recall:R)",
    )
    rule.add_argument(
        "--review-budget",
        type=float,
        metavar="B",
        help="policy: the best validation recall flagging at most B of a 1:1000 stream "
        "(same as --threshold-rule budget:B)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="a local backbone weights file instead of the shipped one",
    )
    p.add_argument(
        "--allow-download",
        action="store_true",
        help="let timm:<model> backbones download weights (needs internet)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _model_options(p: argparse.ArgumentParser) -> None:
    """--model and --cache-dir, as `check` and `explain` take them."""
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="detector bundle folder (default: the one shipped in the package)",
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="optional feature cache folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facecheck",
        description="Detect edited (Photoshop) and GAN-generated face images.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"facecheck {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "check",
        help="score images: fake probability and verdict per image",
        description="Score images. A file that cannot be read gets a clear "
        "per-file error; the others are still scored. Exit status: 0 all scored, "
        "1 some inputs were invalid, 2 usage or model error.",
    )
    p.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    _model_options(p)
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="override the bundle's validation-chosen threshold",
    )
    p.add_argument("--json", action="store_true", help="JSON lines output")
    p.add_argument(
        "--regions",
        choices=["flagged", "all", "none"],
        default="flagged",
        help="which images get region scores (eye/nose/mouth replaced): those judged fake "
        "(default), all, or none",
    )

    p = sub.add_parser(
        "explain",
        help="show where an image looks edited: heatmap and region scores as a PNG",
        description="For each image write OUT/<name>.explain.png (the input's size: the "
        "detector's heatmap blended in, the eye/nose/mouth boxes with their scores, the "
        "most likely replaced region in red) and OUT/<name>.explain.json. Exit status as "
        "for `check`.",
    )
    p.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNG and JSON files")
    _model_options(p)

    p = sub.add_parser(
        "calibrate",
        help="set a bundle's threshold from your own photos (at most F of them flagged)",
        description="Score a sample of the photos this deployment receives (unlabelled: at "
        "1 fake in 1,000 they are genuine for this purpose) and write a copy of the bundle "
        "whose threshold flags at most --max-fpr of them. A threshold chosen on the training "
        "data's validation split does not transfer to a camera or source the detector never "
        "saw (benchmarks/thresholds.md); a few hundred of your own photos fix that. Photos "
        "that cannot be scored are left out and counted.",
    )
    p.add_argument(
        "images", nargs="+", type=Path, metavar="PHOTOS", help="image files or folders of images"
    )
    p.add_argument(
        "--max-fpr",
        type=float,
        required=True,
        metavar="F",
        help="share of the photos the new threshold may flag, e.g. 0.05",
    )
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    _model_options(p)

    p = sub.add_parser(
        "train",
        help="train a detector bundle on a protocol's train split",
        description="Fit a head on the protocol's train split, choose the "
        "threshold on its validation split, save a bundle. The test split is "
        "not touched (use `evaluate`).",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="manifest.jsonl, a folder holding one, or a folder with real/ and fake/",
    )
    p.add_argument("--protocol", default="ALL", help="P1, P2, P3, P3-212, P4 or ALL (default)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument(
        "--head",
        default="logreg",
        help="logreg (default) or mlp, optionally with an imbalance strategy: "
        "mlp:smote0.1+under0.5+focal, logreg:under (see README); or regionmil (with "
        "--head-input image+regions: region logits pooled into the image's, also taught "
        "the rff file names' region bits; benchmarks/region_mil.md); or tokenmil (with "
        "--head-input tokens: regionmil plus attention over every patch token; "
        "benchmarks/token_mil.md, token_all.md)",
    )
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="temperature-scale the scores on validation, so P(fake) is a probability",
    )
    p.add_argument(
        "--fake-rate",
        type=float,
        default=None,
        metavar="R",
        help="with --calibrate: shift probabilities to this prior (e.g. 0.001 for 1:1000)",
    )
    p.add_argument(
        "--add-manifest",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="extra labelled images (e.g. from `facecheck feedback export`) added to the "
        "training split only; any that are byte-identical to a validation or test image are "
        "left out (repeatable)",
    )
    p.add_argument(
        "--no-regions",
        action="store_true",
        help="skip the region scores (left eye, right eye, nose, mouth; trained on the "
        "rff fakes' file-name bits, so only when the training data have them)",
    )
    p.add_argument(
        "--region-view",
        choices=["auto", "crops", "pooled"],
        default="auto",
        help="region features from four crops through the backbone, or the backbone's map "
        "pooled inside the region boxes (one pass); auto (default): pooled for CLIP, crops "
        "for CNNs (see benchmarks/localise.md)",
    )
    _head_input_option(p)
    _face_stage_option(p)
    _common(p)

    p = sub.add_parser(
        "evaluate",
        help="run protocols x backbones x heads and write a report",
        description="For each protocol, backbone and head: fit on train, "
        "threshold on val, score each test set once. Writes report.md, plots and "
        "metrics.csv, and appends rows to the cumulative model_scores.csv.",
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument(
        "--protocols",
        default="P1,P2,P3,P3-212,P4",
        help="comma-separated: P1, P2, P3, P3-212, P4, ALL, P6 (localisation, on P1's split) "
        "and P7 (leave one source out: P7-TPDNE, P7-FAKEFACES, P7-HARD, P7-UTKFACE, P7-RFF)",
    )
    p.add_argument("--backbones", default="efficientnet_lite0,mobilenet_v2")
    p.add_argument(
        "--heads",
        default="logreg,mlp",
        help="comma-separated head specs, e.g. logreg,mlp:focal,mlp:smote0.1+under0.5",
    )
    p.add_argument("--out", type=Path, default=None, help="report folder (default reports/<run>)")
    p.add_argument("--scores-csv", type=Path, default=Path("reports/model_scores.csv"))
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument("--run-name", default=None)
    p.add_argument(
        "--cv",
        type=int,
        default=0,
        metavar="K",
        help="also report K-fold ROC-AUC over train+val (hash-grouped), e.g. 5",
    )
    p.add_argument(
        "--cv-protocols",
        default="P1,P2",
        help="protocols that get the K-fold figure (default P1,P2: the small ones)",
    )
    p.add_argument(
        "--perturb",
        default="",
        metavar="NAMES",
        help="protocol P5: also score perturbed copies of the test sets, comma-separated "
        "(jpeg70: re-saved as JPEG q70; resize0.5: halved and scaled back)",
    )
    p.add_argument(
        "--perturb-protocols",
        default="P1,P4",
        help="protocols whose test sets get the perturbed copies (default P1,P4)",
    )
    p.add_argument(
        "--reencode",
        type=int,
        default=None,
        metavar="Q",
        help="re-encode every picture as JPEG quality Q before the backbone (removes "
        "compression differences between sources; see the report's source-bias audit)",
    )
    p.add_argument(
        "--train-augment",
        default="",
        metavar="NAME",
        help="add one perturbed copy of every training image of the --perturb-protocols "
        "(degrade: random rescale 0.4-1x and JPEG q50-95, seeded per image)",
    )
    _head_input_option(p)
    _face_stage_option(p)
    _common(p)

    p = sub.add_parser(
        "finetune",
        help="train a network end to end (baseline CNN, ConvNeXt, Lite0) on a protocol",
        description="Fine-tune a network on a protocol's train split, early-stopping on "
        "its val split, with an imbalance strategy and augmentation; threshold from val. "
        "With --evaluate, each test set is then scored once and the metrics written.",
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--protocol", default="P2")
    p.add_argument("--network", default="baseline_cnn", help="see `facecheck backbones`")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=4, help="epochs without val-loss gain")
    p.add_argument("--imbalance", default="class_weight", help="e.g. smote0.1+under0.5+focal")
    p.add_argument("--augment", default=None, help="e.g. flip,rotate:10,jpeg:60-95 or none")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    p.add_argument("--evaluate", action="store_true", help="score the test sets once")
    p.add_argument("--out", type=Path, required=True, help="folder for model.pt, history")
    _common(p)

    sub.add_parser("backbones", help="list feature extractors and fine-tunable networks")
    _service_parsers(sub)
    return parser


def _store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the service's folder (default $FACECHECK_DATA_DIR or ~/.local/share/facecheck)",
    )
    p.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db (default: SQLite file "
        "in the data folder; or $FACECHECK_DATABASE_URL)",
    )


def _service_parsers(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the scoring API and the review queue (FastAPI; docs at /docs)",
        description="Serve POST /v1/checks, GET /v1/checks/{id}, /health, /metrics and the "
        "review pages at /review. With no options: the shipped detector and an SQLite file "
        "under ~/.local/share/facecheck; on first start an API key and a reviewer "
        "'admin' are created and printed once. Every option can also be set as "
        "FACECHECK_<OPTION> in the environment.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", type=Path, default=None, help="detector bundle (default: shipped)")
    p.add_argument(
        "--fake-above",
        type=float,
        default=None,
        metavar="P",
        help="decide 'fake' without a person at fake probability >= P (default: every "
        "flagged image goes to review)",
    )
    p.add_argument(
        "--no-fake-cases",
        action="store_true",
        help="do not open review cases for automatic 'fake' verdicts",
    )
    p.add_argument(
        "--retention-days",
        type=float,
        default=None,
        help="delete stored images this many days after the check (default 30)",
    )
    p.add_argument("--max-upload-mb", type=float, default=None, help="upload limit (default 10)")
    p.add_argument("--lease-seconds", type=int, default=None, help="claim on a case (600)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="score up to this many waiting uploads in one model call (default 1: off; "
        "see benchmarks/load.md)",
    )
    p.add_argument("--secure-cookies", action="store_true", help="when served over HTTPS")
    _store_options(p)

    p = sub.add_parser("apikey", help="create, list or revoke the scoring API's keys")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("name", nargs="?", help="create: a name for the key; revoke: its id")
    _store_options(p)

    p = sub.add_parser("reviewer", help="add a reviewer or set a reviewer's password")
    p.add_argument("action", choices=["add", "passwd"])
    p.add_argument("username")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (default: ask, or generate with --generate)",
    )
    p.add_argument("--generate", action="store_true", help="generate a password and print it")
    _store_options(p)

    p = sub.add_parser(
        "feedback",
        help="reviewed cases as training data; reviewer agreement with the model",
        description="export: write decided cases (image + the reviewer's label) as a dataset "
        "folder for `facecheck train --add-manifest OUT/manifest.jsonl`. report: per period "
        "and model version, decided cases and how often reviewers agreed with the model.",
    )
    p.add_argument("action", choices=["export", "report"])
    p.add_argument("--out", type=Path, default=None, help="export: folder to write")
    p.add_argument("--by", default="week", choices=["day", "week", "month"])
    p.add_argument("--csv", type=Path, default=None, help="report: also write this CSV")
    _store_options(p)


def _rule(args) -> str:
    """The validation threshold rule, from --target-recall, --review-budget or --threshold-rule."""
    if getattr(args, "target_recall", None) is not None:
        return f"recall:{args.target_recall:g}"
    if getattr(args, "review_budget", None) is not None:
        return f"budget:{args.review_budget:g}"
    if getattr(args, "max_fpr", None) is not None:
        return f"fpr:{args.max_fpr:g}"
    return args.threshold_rule


def _cache(args):
    from .features import FeatureCache

    return FeatureCache(args.cache_dir) if getattr(args, "cache_dir", None) else FeatureCache()


def _names(text: str, *, upper: bool = False) -> list[str]:
    """A comma-separated option as a list of names."""
    return [t.strip().upper() if upper else t.strip() for t in text.split(",") if t.strip()]


def _records_of(ds, protocols, splits: tuple[str, ...], only: list[str] | None = None):
    """The unique images (by content hash) of these splits of these protocols; with "test",
    also every image of their named test sets (P7's held-out sources lie outside the split)."""
    picked = {}
    for p in protocols:
        if only is not None and p.name not in only:
            continue
        parts = [p.split[s] for s in splits]
        if "test" in splits:
            parts += list(p.test_sets.values())
        picked.update({r.sha256: r for part in parts for r in part})
    return ds.subset(picked.values())


def _expand(paths: list[Path]) -> list[Path]:
    from .data import IMAGE_SUFFIXES

    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)  # missing or odd files are reported per file by the pipeline
    return out


def _detector_and_files(args):
    """The bundle and the image files of `check` / `explain`; (None, []) after printing why
    when either is missing (exit status 2)."""
    from .pipeline import BundleError, Detector

    cache = _cache(args) if args.cache_dir else None
    try:
        det = Detector.load(args.model, cache=cache)
    except (BundleError, OSError, KeyError, RuntimeError) as exc:
        print(f"facecheck: cannot load the detector: {exc}", file=sys.stderr)
        return None, []
    files = _expand(args.images)
    if not files:
        print("facecheck: no images found", file=sys.stderr)
    return det, files


def cmd_check(args) -> int:
    det, files = _detector_and_files(args)
    if det is None or not files:
        return 2
    if args.threshold is not None:
        det.threshold = args.threshold
    verdicts = det.check(files, regions=args.regions)
    if args.json:
        for v in verdicts:
            print(json.dumps(v.to_dict()))
    else:
        width = max(len(v.input) for v in verdicts)
        print(f"{'image':<{width}}  {'P(fake)':>7}  verdict")
        for v in verdicts:
            if v.error:
                print(f"{v.input:<{width}}  {'-':>7}  {v.verdict}: {v.error}")
            else:
                # Four decimals: calibrated to a 1:1000 prior, probabilities are small.
                where = ""
                if v.regions:
                    top = max(v.regions, key=v.regions.get)  # type: ignore[arg-type]
                    where = f" (most likely edited: {top} {v.regions[top]:.2f})"
                print(f"{v.input:<{width}}  {v.fake_probability:7.4f}  {v.verdict}{where}")
        print(f"model {det.version}, threshold {det.threshold:.4g}", file=sys.stderr)
    return 1 if any(v.error for v in verdicts) else 0


def cmd_calibrate(args) -> int:
    import shutil

    from .pipeline import default_bundle_path
    from .report import write_model_card

    det, files = _detector_and_files(args)
    if det is None or not files:
        return 2
    if len(files) < 100:
        print(
            f"facecheck: {len(files)} photos: with fewer than about 100 the rate "
            f"{args.max_fpr:g} is only roughly kept",
            file=sys.stderr,
        )
    try:
        record = det.calibrate_threshold(files, args.max_fpr)
    except ValueError as exc:
        print(f"facecheck: {exc}", file=sys.stderr)
        return 2
    origin = args.model or default_bundle_path()
    if args.out.resolve() != origin.resolve():
        shutil.copytree(origin, args.out, dirs_exist_ok=True)  # region heads, card, etc.
    det.save(args.out)
    write_model_card(args.out, det)
    print(
        f"saved {args.out} ({det.version}): threshold {det.threshold:.4f} flags "
        f"{record['flagged_share']:.1%} of {record['n_photos']} photos (was "
        f"{record['previous_threshold']:.4f}, {record['previous_rule']}); "
        f"{record['n_left_out']} left out (unreadable, no face or several)"
    )
    return 0


def cmd_explain(args) -> int:
    from .explain import explain_to
    from .imageio import ImageError

    det, files = _detector_and_files(args)
    if det is None or not files:
        return 2
    failed = 0
    for f in files:
        try:
            exp, png = explain_to(det, f, args.out, f.stem)
        except ImageError as exc:
            print(f"{f}: {exc.code}: {exc}", file=sys.stderr)
            failed += 1
            continue
        (args.out / f"{f.stem}.explain.json").write_text(json.dumps(exp.to_dict(), indent=2))
        v = exp.verdict
        if v.error:
            failed += 1
            print(f"{f}: {v.verdict}: {v.error} -> {png}")
        else:
            regions = ", ".join(f"{k} {p:.2f}" for k, p in (exp.regions or {}).items())
            print(
                f"{f}: {v.verdict} {v.fake_probability:.4f}; top region {exp.top_region}"
                + (f" ({regions})" if regions else "")
                + f" -> {png}"
            )
    return 1 if failed else 0


def cmd_train(args) -> int:
    import numpy as np

    from .data import load_dataset
    from .localise import region_bits
    from .metrics import binary_metrics
    from .pipeline import Detector
    from .protocols import build
    from .report import write_model_card

    ds = load_dataset(args.data)
    proto = build(args.protocol, ds, args.seed)
    det = Detector(
        args.backbone,
        args.head,
        tta=args.tta,
        weights=args.weights,
        allow_download=args.allow_download,
        cache=_cache(args),
        head_params={"seed": args.seed},
        progress=not args.quiet,
        face_stage=args.face_stage,
        region_view=args.region_view,
        head_input=args.head_input,
    )
    train, val = proto.split.train, proto.split.val
    added = _added_training(args.add_manifest, proto) if args.add_manifest else None
    if added is not None:
        train = train.subset([*train.records, *added.records])
    t0 = time.perf_counter()
    # Pictures the face stage refuses (no face, several) are left out of training and of
    # threshold choice, and counted in the bundle.
    Ft = det.features(train.paths, train.hashes, skip_faceless=True)
    Fv = det.features(val.paths, val.hashes, skip_faceless=True)
    keep_t, keep_v = ~np.isnan(Ft).any(axis=1), ~np.isnan(Fv).any(axis=1)
    Ft, yt, Fv = Ft[keep_t], train.y[keep_t], Fv[keep_v]
    val_y, val_sources = val.y[keep_v], val.sources[keep_v]
    det.fit_features(Ft, yt, region_bits(train.records)[keep_t])
    region_counts = _fit_regions(det, train) if not args.no_regions else None
    if args.calibrate:
        det.calibrate_from(Fv, val_y, fake_rate=args.fake_rate, features=True)
    thr = det.set_threshold_from(Fv, val_y, rule=_rule(args), features=True, groups=val_sources)
    val_metrics = binary_metrics(val_y, det.score_features(Fv), thr)
    det.save(
        args.out,
        training={
            "protocol": proto.name,
            "title": proto.title,
            "seed": args.seed,
            "data": str(args.data),
            "data_fingerprint": train.fingerprint(),
            "train_counts": train.counts(),
            "val_counts": val.counts(),
            "left_out_by_face_stage": {
                "train": int((~keep_t).sum()),
                "val": int((~keep_v).sum()),
            },
            "region_training": region_counts,
            "added": None
            if added is None
            else {"manifests": [str(m) for m in args.add_manifest], **added.counts()},
            "seconds": round(time.perf_counter() - t0, 1),
        },
        metrics_val=val_metrics,
    )
    write_model_card(args.out, det)
    print(
        f"saved {args.out} ({det.version}); threshold {thr:.3f} chosen on validation "
        f"({_rule(args)})"
    )
    print(
        "validation: "
        + ", ".join(f"{k} {val_metrics[k]:.3f}" for k in ("recall", "precision", "roc_auc", "fpr"))
    )
    return 0


def _added_training(manifests: list[Path], proto):
    """Records of ``manifests`` for the training split, minus copies of val/test images."""
    from .data import Dataset, load_dataset, with_hashes

    held_out = {r.sha256 for name in ("val", "test") for r in proto.split[name].records}
    held_out |= {r.sha256 for ds in proto.test_sets.values() for r in ds.records}
    records = [r for m in manifests for r in with_hashes(load_dataset(m)).records]
    kept = [r for r in records if r.sha256 not in held_out]
    if len(kept) < len(records):
        print(
            f"facecheck train: {len(records) - len(kept)} added images are copies of "
            "validation/test images and were left out",
            file=sys.stderr,
        )
    return Dataset(kept)


def _fit_regions(det, train) -> dict[str, int] | None:
    """Fit the detector's region scores on the training images that have region labels
    (rff reals and the rff fakes' file-name bits); None if there are no such fakes."""
    import numpy as np

    from .localise import region_targets

    Y, known = region_targets(train.records)
    labelled = train.subset(r for r, k in zip(train.records, known, strict=True) if k)
    n_fakes = sum(r.y for r in labelled)
    if n_fakes < 10:
        return None
    F = det.region_features(labelled.paths, labelled.hashes)
    ok = ~np.isnan(F).any(axis=1)
    try:
        det.fit_regions(F[ok], Y[known][ok])
    except ValueError as exc:  # e.g. a region replaced in fewer than two training fakes
        print(f"facecheck: no region scores ({exc})", file=sys.stderr)
        return None
    return {"images": int(ok.sum()), "fakes": int(labelled.y[ok].sum())}


def _reencoded(backbone, quality: int | None):
    """The backbone with every picture re-encoded as JPEG ``quality`` first (None: as is)."""
    if not quality:
        return backbone
    if not 1 <= quality <= 100:
        raise ValueError(f"--reencode takes a JPEG quality 1-100, not {quality}")
    prep = dataclasses.replace(backbone.preprocessing, jpeg_quality=quality)
    return dataclasses.replace(backbone, preprocessing=prep)


def cmd_evaluate(args) -> int:
    import numpy as np

    from . import __version__
    from .data import load_dataset
    from .evaluate import (
        evaluate_localisation,
        evaluate_protocol,
        extract_all,
        extract_perturbed,
    )
    from .features import FeatureExtractor, face_stage_for, load_backbone, resolve_name
    from .pipeline import check_head_input, head_view, input_params
    from .protocols import build, expand
    from .regions import REGIONS
    from .report import git_commit, machine_description, write_report

    t0 = time.perf_counter()
    run = args.run_name or time.strftime("%Y%m%d-%H%M%S")
    out = args.out or Path("reports") / run
    ds = load_dataset(args.data)
    names = expand(_names(args.protocols, upper=True))
    # P6 (localisation) is measured on P1's split with the first backbone and head.
    p6 = "P6" in names
    protocols = [build(p, ds, args.seed) for p in names if p != "P6"]
    heads = _names(args.heads)
    # "a+b" concatenates the backbones' features (each extracted and cached on its own).
    backbones = ["+".join(resolve_name(m) for m in b.split("+")) for b in _names(args.backbones)]
    extra = [build("P1", ds, args.seed)] if p6 else []
    used = _records_of(ds, protocols + extra, ("train", "val", "test"))
    localisation = []
    cache = _cache(args)
    cv_on = _names(args.cv_protocols, upper=True)
    perturbations = _names(args.perturb)
    p5_on = _names(args.perturb_protocols, upper=True)
    p5_tests = _records_of(ds, protocols, ("test",), only=p5_on)
    p5_train = _records_of(ds, protocols, ("train",), only=p5_on)
    results, errors, extract_s = [], {}, {}
    audit_feats = None
    # Region-aware: the picture's features, then the four regions' pooled from one pass
    # (what `train --head-input image+regions` fits), so the report's rows say "+regions".
    regions = args.head_input != "image"
    if regions and (p6 or args.tta):
        raise ValueError(f"--head-input {args.head_input} takes no P6 or --tta")
    for h in heads:
        check_head_input(h, args.head_input)
    for bb in backbones:
        t = time.perf_counter()
        members = bb.split("+")
        if len(members) > 1 and (perturbations or args.train_augment or p6):
            raise ValueError("concatenated backbones (a+b) take no --perturb, --train-augment, P6")
        extractors = [
            FeatureExtractor(
                _reencoded(backbone, args.reencode),
                cache,
                tta=args.tta,
                progress=not args.quiet,
                face_stage=face_stage_for(m, args.face_stage),
                view=head_view(backbone, args.head_input),
            )
            for m, backbone in ((m, load_backbone(m)) for m in members)
        ]
        label = f"{bb}+{args.head_input.removeprefix('image+')}" if regions else bb
        parts = [extract_all(used, e) for e in extractors]
        ex = extractors[0]
        feats = {
            h: np.concatenate([f[h] for f, _ in parts])
            for h in parts[0][0]
            if all(h in f for f, _ in parts)
        }
        errs = {k: v for _, e in parts for k, v in e.items()}
        if audit_feats is None:
            audit_feats = feats
            if args.head_input == "tokens":  # the source probe reads no patch tokens
                width = ex.backbone.dim * (1 + len(REGIONS))
                audit_feats = {h: v[:width] for h, v in feats.items()}
        extract_s[label] = round(time.perf_counter() - t, 1)
        errors.update(errs)
        perturbed = {name: extract_perturbed(p5_tests, ex, name) for name in perturbations}
        augment = None
        if args.train_augment:
            augment = (args.train_augment, extract_perturbed(p5_train, ex, args.train_augment))
        if p6 and bb == backbones[0]:
            loc = evaluate_localisation(
                ds,
                ex,
                feats,
                head=heads[0],
                rule=_rule(args),
                seed=args.seed,
                progress=not args.quiet,
            )
            localisation.append(loc)
            if not args.quiet:
                hit = loc.metrics["top_region"]["top_hit"]  # type: ignore[index]
                print(
                    f"P6 {bb}: top region replaced {hit:.3f}, mean per-region ROC-AUC "
                    f"{loc.metrics['mean_auc_all']:.3f}",
                    file=sys.stderr,
                )
        for proto in protocols:
            results += evaluate_protocol(
                proto,
                feats,
                backbone=label,
                heads=heads,
                tta=args.tta,
                rule=_rule(args),
                n_boot=args.n_boot,
                seed=args.seed,
                cv_folds=args.cv if proto.name in cv_on else 0,
                perturbed=perturbed if proto.name in p5_on else None,
                train_augment=augment if proto.name in p5_on else None,
                head_params=input_params(ex.backbone, args.head_input),
            )
            if not args.quiet:
                print(
                    f"{proto.name} {label}: "
                    + "; ".join(
                        f"{r.head} ROC-AUC {r.tests[proto.headline].at_val['roc_auc']:.3f}"
                        for r in results[-len(heads) :]
                    ),
                    file=sys.stderr,
                )
    info = {
        "run": run,
        "facecheck": __version__,
        "commit": git_commit(),
        "data": str(args.data),
        "data fingerprint": ds.fingerprint()[:16],
        "images": len(ds),
        "exact duplicate groups": len(ds.duplicates),
        "seed": args.seed,
        "threshold_rule": _rule(args),
        "n_boot": args.n_boot,
        "tta": args.tta,
        "face_stage": args.face_stage,
        "P5 perturbations": ", ".join(perturbations) or "none",
        "training augmentation": args.train_augment or "none",
        "re-encoded at load": f"JPEG q{args.reencode}" if args.reencode else "no",
        "machine": machine_description(),
        "feature extraction seconds (cache lookups included)": extract_s,
        "wall seconds": round(time.perf_counter() - t0, 1),
    }
    if errors:
        codes: dict[str, int] = {}
        for message in errors.values():
            code = message.split(":", 1)[0]
            codes[code] = codes.get(code, 0) + 1
        info["images left out"] = ", ".join(f"{n} {c}" for c, n in sorted(codes.items()))
    from .audit import run_audit

    audit = run_audit(protocols, audit_feats or {}, seed=args.seed)
    path = write_report(
        out,
        protocols,
        results,
        info,
        scores_csv=args.scores_csv,
        localisation=localisation,
        audit=audit,
    )
    print(f"report: {path}")
    return 0


def cmd_finetune(args) -> int:
    from .data import load_dataset
    from .metrics import binary_metrics
    from .protocols import build
    from .report import write_csv
    from .training import FineTuner, TrainConfig

    ds = load_dataset(args.data)
    proto = build(args.protocol, ds, args.seed)
    config = TrainConfig(
        network=args.network,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        patience=args.patience,
        imbalance=args.imbalance,
        seed=args.seed,
        weights=str(args.weights) if args.weights else None,
        **({"augment": args.augment} if args.augment is not None else {}),
    )
    train, val = proto.split.train, proto.split.val
    ft = FineTuner(config, device=args.device)
    t0 = time.perf_counter()
    ft.fit(
        train.paths,
        train.y,
        val.paths,
        val.y,
        checkpoint_dir=args.out / "checkpoints",
        resume=args.resume,
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - t0
    sv = ft.predict_proba(val.paths)[:, 1]
    thr = ft.set_threshold_from(val.y, sv, rule=_rule(args), groups=val.sources)
    ft.save(args.out / "model.pt")
    write_csv(args.out / "history.csv", ft.history, fields=None)
    summary = {
        "protocol": proto.name,
        "seed": args.seed,
        "config": dataclasses.asdict(config),
        "train_counts_after_imbalance": ft.train_counts_,
        "device": str(ft.device),
        "train_seconds": round(seconds, 1),
        "best_epoch": ft.best_epoch_,
        "threshold": thr,
        "threshold_rule": _rule(args),
        "val": binary_metrics(val.y, sv, thr),
    }
    if args.evaluate:
        summary["test"] = {}
        for name, test in proto.test_sets.items():
            s = ft.predict_proba(test.paths)[:, 1]
            summary["test"][name] = binary_metrics(test.y, s, thr)
            m = summary["test"][name]
            print(
                f"test {name}: ROC-AUC {m['roc_auc']:.3f}, recall {m['recall']:.3f}, "
                f"precision {m['precision']:.3f}, FPR {m['fpr']:.3f}"
            )
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"saved {args.out / 'model.pt'}; threshold {thr:.3f} from validation ({_rule(args)})")
    return 0


def cmd_backbones(_args) -> int:
    from .features import _REGISTRY

    for name, entry in sorted(_REGISTRY.items()):
        installed = "installed" if entry.default_weights() else f"missing: {entry.install_hint}"
        print(f"{name:20s} {entry.description}; weights {installed}")
    print("timm:<model>         any timm model with --weights FILE (or --allow-download)")
    from .networks import NETWORKS

    print("\nnetworks for `facecheck finetune`:")
    for name, net in NETWORKS.items():
        print(f"{name:20s} {net.description}")
    return 0


def _settings(args, **overrides):
    from .settings import ServiceSettings

    return ServiceSettings.from_env(
        data_dir=args.data_dir, database_url=args.database_url, **overrides
    )


def _open_store(args):
    from .store import Store

    return Store(_settings(args).url)


def cmd_serve(args) -> int:
    from .service import serve

    settings = _settings(
        args,
        model=args.model,
        fake_above=args.fake_above,
        cases_for_fakes=False if args.no_fake_cases else None,
        retention_days=args.retention_days,
        max_upload_bytes=None if args.max_upload_mb is None else int(args.max_upload_mb * 2**20),
        lease_seconds=args.lease_seconds,
        max_batch=args.max_batch,
        secure_cookies=True if args.secure_cookies else None,
    )
    print(
        f"facecheck serve: http://{args.host}:{args.port}/docs (API), /review (queue); "
        f"data in {settings.data_dir if not settings.database_url else settings.database_url}",
        file=sys.stderr,
    )
    serve(settings, args.host, args.port)
    return 0


def cmd_apikey(args) -> int:
    store = _open_store(args)
    if args.action == "create":
        key = store.create_api_key(args.name or "unnamed")
        print(key)
        print("(shown once; only its hash is stored)", file=sys.stderr)
    elif args.action == "list":
        for k in store.list_api_keys():
            state = f"revoked {k['revoked_at']}" if k["revoked_at"] else "active"
            print(f"{k['id']:4d}  {k['prefix']}...  {k['name']:20s} {k['created_at']}  {state}")
    else:
        if not (args.name or "").isdigit():
            raise ValueError("apikey revoke needs the key's id (see `facecheck apikey list`)")
        if not store.revoke_api_key(int(args.name)):
            raise ValueError(f"no active key with id {args.name}")
        print(f"revoked key {args.name}")
    return 0


def cmd_reviewer(args) -> int:
    import getpass

    from .security import new_token

    if args.generate:
        password = new_token()[:20]
    elif args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.username}: ")
    store = _open_store(args)
    if args.action == "add":
        store.add_reviewer(args.username, password)
    else:
        store.set_password(args.username, password)
    print(f"reviewer {args.username}: " + (password if args.generate else "password set"))
    return 0


def cmd_feedback(args) -> int:
    from .feedback import agreement, agreement_csv, export

    store = _open_store(args)
    if args.action == "export":
        if args.out is None:
            raise ValueError("feedback export needs --out FOLDER")
        s = export(store, args.out)
        print(
            f"wrote {s.manifest}: {s.exported} reviewed images ({s.real} real, {s.fake} fake); "
            f"{s.without_image} decided cases had no image left (retention)"
        )
        return 0
    rows = agreement(store, args.by)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        args.csv.write_text(agreement_csv(rows))
    print(f"{args.by:10s} {'model':40s} {'decided':>8s} {'fake':>6s} {'agree':>7s}")
    for r in rows:
        print(
            f"{r['period']!s:10s} {r['model_version']!s:40s} {r['decided']:8d} "
            f"{r['decided_fake']:6d} {r['agreement']:7.1%}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "check": cmd_check,
        "explain": cmd_explain,
        "calibrate": cmd_calibrate,
        "train": cmd_train,
        "evaluate": cmd_evaluate,
        "finetune": cmd_finetune,
        "backbones": cmd_backbones,
        "serve": cmd_serve,
        "apikey": cmd_apikey,
        "reviewer": cmd_reviewer,
        "feedback": cmd_feedback,
    }[args.command]
    try:
        return handler(args)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"facecheck {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
