"""``facecheck``: train a detector, evaluate the protocols, check images.

A thin layer: every command goes through :mod:`facecheck.detector.pipeline`,
:mod:`facecheck.evaluation.data` and :mod:`facecheck.evaluation.report`; nothing here
decodes, crops or thresholds on its own.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
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
See docs/research.md for the protocols (P1-P7)."""


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


def _runtime_option(p: argparse.ArgumentParser, auto: str) -> None:
    p.add_argument(
        "--runtime",
        choices=["auto", "onnx", "torch"],
        default="auto",
        help="onnx: the bundle's exported graph in ONNX Runtime (`facecheck export` writes "
        f"it; no torch imported); torch: PyTorch; auto (default): {auto}. Same verdicts "
        "either way",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facecheck",
        description="Detect edited (Photoshop) and GAN-generated face images.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from facecheck import __version__

    parser.add_argument("--version", action="version", version=f"facecheck {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "check",
        help="score images: fake probability and verdict per image",
        description="Score images; one line per image, printed as soon as it is scored "
        "(a progress bar on a terminal's stderr). A file that cannot be read gets a clear "
        "per-file error; the others are still scored. Exit status: 0 all real, 1 some "
        "flagged fake, 2 usage or model error, 3 some inputs could not be judged "
        "(unreadable, no face or several).",
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
    _runtime_option(p, "onnx where the bundle has a current graph (starts in ~1 s)")

    p = sub.add_parser(
        "score",
        help="score any number of images into a Parquet file, resumably",
        description="Score every image under the folders, named by the manifests (JSON "
        "lines with 'path') or .txt lists, into OUT (Parquet: one row per image with its "
        "verdict, score, error if any, region scores and the model version). Written a "
        "chunk at a time to OUT.parts/: a run that is killed resumes where it stopped, no "
        "row lost or written twice. Memory stays at one chunk.",
    )
    p.add_argument("sources", nargs="+", type=Path, help="folders, manifests or image files")
    p.add_argument("--out", type=Path, required=True, help="the Parquet file to write")
    p.add_argument("--chunk", type=int, default=64, help="images per part (default 64)")
    p.add_argument(
        "--regions", choices=["flagged", "all", "none"], default="flagged", help="as for check"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local (this process) or ray: the chunks scored by --workers Ray actors, each "
        "holding the model (a local Ray instance, or the cluster at --ray-address)",
    )
    p.add_argument("--workers", type=int, default=1, help="Ray actors (default 1)")
    p.add_argument(
        "--ray-address",
        default=None,
        help="an existing Ray cluster (e.g. ray://head:10001 or auto); its nodes must see the "
        "input files and --out at the same paths",
    )
    _model_options(p)
    _runtime_option(
        p,
        "torch on a CPU with native bfloat16 (faster passes), else onnx where the bundle "
        "has a current graph",
    )

    p = sub.add_parser(
        "export",
        help="write a bundle's scoring graph to ONNX (check and score then run without torch)",
        description="Write the bundle's whole scoring graph (backbone, region pooling, head "
        "and region heads) as one ONNX file: into the bundle's folder, or for the shipped "
        "bundle into the cache. check and score then run it in ONNX Runtime without "
        "importing torch (scores equal to the PyTorch path's to 1e-4). Covers CLIP bundles "
        "with logistic heads; others are refused with the reason.",
    )
    _model_options(p)
    p.add_argument("--out", type=Path, default=None, help="where to write the graph")

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
    p.add_argument(
        "--groups",
        type=Path,
        default=None,
        metavar="MANIFEST",
        help="a manifest.jsonl of labelled photos (label, and a 'groups' column such as "
        '{"gender": "female", "age": "30-44"}): shows and records, at the new threshold, how '
        "often each group's honest photos are flagged (equal treatment; never used to decide)",
    )
    _model_options(p)

    p = sub.add_parser(
        "train",
        help="train a detector bundle on a protocol's train split",
        description="Fit a head on the protocol's train split, choose the "
        "threshold on its validation split, save a bundle. The test split is "
        "not touched (use `evaluate`). --recipe shipped gives every choice of the shipped "
        "detector (facecheck/resources/recipes/shipped.toml); options given here win.",
    )
    p.add_argument(
        "--recipe",
        default=None,
        metavar="NAME|FILE",
        help="a recipe's choices as this command's defaults: a packaged recipe's name "
        "(shipped) or a TOML file of train options",
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
        "mlp:smote0.1+under0.5+focal, logreg:under (see docs/usage.md); or regionmil (with "
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
    _field_training_options(p)
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
        "--balance-groups",
        default="",
        metavar="ATTRS",
        help="weight training images so that every group of these labelled attributes "
        "(comma-separated: age, gender, race; UTKFace's file names or a manifest's groups "
        "column, and the synthetic fakes made from them) has the same total weight within "
        "its source and class (logreg head; issue 31). Groups are never seen when scoring",
    )
    p.add_argument(
        "--balance-sources",
        action="store_true",
        help="weight training images so that every source (camera, generator, synthetic "
        "kind) has the same total weight within its class (logreg head)",
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
        help="comma-separated: P1, P2, P3, P3-212, P4, ALL, P6 (localisation, on P1's split), "
        "P7 (leave one source out: P7-TPDNE, P7-FAKEFACES, P7-HARD, P7-UTKFACE, P7-RFF) and "
        "P8 (field shift: P8-SEEN, P8-LOFO-<family>, P8-CAMERA-<source>)",
    )
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="DIR",
        help="evaluate this saved detector as it is (its head and threshold) on the test sets "
        "of --protocols instead of fitting heads ('default': the shipped one); refuses test "
        "images that were in its training split",
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
        help="also score processed copies of the test sets, comma-separated (P5: jpeg70, "
        "re-saved as JPEG q70; resize0.5, halved and scaled back; p8: all of P8's chains, "
        "JPEG q60-q90, down/upscaling, the face in a larger photo, PNG with alpha, "
        "screenshot, print-and-recapture)",
    )
    p.add_argument(
        "--perturb-protocols",
        default="P1,P4",
        help="protocols whose test sets get the perturbed copies (default P1,P4; groups "
        "such as P8 allowed)",
    )
    p.add_argument(
        "--perturb-sample",
        type=int,
        default=0,
        metavar="N",
        help="process at most N test images of each source and label (a seeded draw; "
        "default 0: all of them), to bound the cost of many chains",
    )
    p.add_argument(
        "--reencode",
        type=int,
        default=None,
        metavar="Q",
        help="re-encode every picture as JPEG quality Q before the backbone (removes "
        "compression differences between sources; see the report's source-bias audit)",
    )
    _field_training_options(p)
    _head_input_option(p)
    _face_stage_option(p)
    _common(p)

    _synthesize_parser(sub)

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
        "--members",
        default=None,
        metavar="DIR[,DIR...]",
        help="further detector bundles that vote with --model: all real -> real, all fake -> "
        "fake, any disagreement -> a person (the thesis's rule; --fake-above does not apply)",
    )
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
        help="score up to this many waiting uploads in one model call (default 16; 1: off; "
        "see benchmarks/load.md)",
    )
    p.add_argument(
        "--insecure-dev",
        action="store_true",
        help="plain-HTTP development only: cookies without Secure and the __Host- prefix "
        "(by default they need HTTPS; see docs/deploy.md)",
    )
    p.add_argument(
        "--hsts", action="store_true", help="send Strict-Transport-Security (behind TLS)"
    )
    _store_options(p)

    p = sub.add_parser(
        "audit",
        help="verify or export the service's audit log",
        description="verify: check the hash chain of the audit log (every login, view, "
        "claim, decision, key and reviewer change); export: write its events as JSON lines "
        "after verifying it. Exits 1 if the chain does not hold.",
    )
    p.add_argument("action", choices=["verify", "export"])
    p.add_argument("--out", type=Path, default=None, help="export: file (default stdout)")
    p.add_argument("--since", default=None, help="export: events at or after (ISO date)")
    _store_options(p)

    p = sub.add_parser(
        "webhooks",
        help="the webhook delivery log",
        description="Deliveries of case.decided events, newest first: tries, last status, "
        "when delivered or when the next try is due.",
    )
    p.add_argument("--limit", type=int, default=50)
    _store_options(p)

    p = sub.add_parser("apikey", help="create, list or revoke the scoring API's keys")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("name", nargs="?", help="create: a name for the key; revoke: its id")
    p.add_argument(
        "--expires-days", type=float, default=None, help="create: the key stops working after"
    )
    _store_options(p)

    p = sub.add_parser(
        "reviewer",
        help="add, list, disable or enable reviewers; set a password or a role",
        description="Roles: admin (also decides escalated cases), reviewer, auditor (reads "
        "cases, decides none). Disabling ends the reviewer's sessions; every change is in "
        "the audit log.",
    )
    p.add_argument("action", choices=["add", "passwd", "role", "disable", "enable", "list"])
    p.add_argument("username", nargs="?")
    p.add_argument("--role", choices=["admin", "reviewer", "auditor"], default=None)
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


def _field_training_options(p: argparse.ArgumentParser) -> None:
    """What `train` and `evaluate` add to training for the field (issue 26), alike."""
    p.add_argument(
        "--synthetic",
        type=Path,
        default=None,
        metavar="DIR",
        help="add the synthetic fakes `facecheck synthesize` wrote in DIR to P8's protocols "
        "(each in its parents' split; P8-LOFO-FACESWAP and -MORPH need them)",
    )
    p.add_argument(
        "--augment-sample",
        type=int,
        default=0,
        metavar="N",
        help="with --train-augment: process at most N training images of each source and "
        "label (a seeded draw; default 0: all). Beware: a cap gives the classes unequal "
        "shares of processed copies, and the head learns 'processed = fake' "
        "(benchmarks/p8_recipes.md); --augment-fraction keeps the shares equal",
    )
    p.add_argument(
        "--augment-fraction",
        type=float,
        default=1.0,
        metavar="F",
        help="with --train-augment: process the share F of every source and label's training "
        "images (a seeded draw; default 1: all)",
    )
    p.add_argument(
        "--augment-validation",
        action="store_true",
        help="with --train-augment: process the same share of the validation images too; "
        "their copies join the threshold choice as groups of their own, so an fpr: rule "
        "holds each camera's processed photos to the rate of its clean ones",
    )
    p.add_argument(
        "--train-augment",
        default="",
        metavar="NAME",
        help="add one processed copy of the training images (every protocol's), seeded per image "
        "(field: one chain drawn per image, resampling, resizing, blur, the face in a larger "
        "photo, then JPEG q55-95; degrade: random rescale 0.4-1x and JPEG q50-95)",
    )


def _synthesize_parser(sub) -> None:
    p = sub.add_parser(
        "synthesize",
        help="make synthetic morphs, face swaps and self-blends from the data's real photos",
        description="Write synthetic fakes (JPEG, their masks, manifest.jsonl) made from the "
        "real photos of each P8 camera, pairs within one camera and one split of protocol "
        "P8 (seed --seed), so `evaluate --synthetic OUT` puts each fake in its parents' "
        "split. Images go outside the repository (default: under the feature cache).",
    )
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, default=None, help="folder to write")
    p.add_argument(
        "--n-train",
        type=int,
        default=400,
        help="fakes of each kind per camera from its training reals (validation and test "
        "reals get as many in proportion; default 400)",
    )
    p.add_argument("--kinds", default="morph,swap,sbi", help="morph, swap, sbi (self-blend)")
    p.add_argument("--seed", type=int, default=0, help="P8's split seed and the draws' (0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# Command -> the module that runs it, imported only when that command runs (start-up time).
COMMANDS = {
    "check": "check",
    "explain": "check",
    "score": "check",
    "calibrate": "check",
    "export": "export",
    "train": "train",
    "evaluate": "evaluate",
    "synthesize": "synthesize",
    "finetune": "finetune",
    "backbones": "backbones",
    "serve": "serve",
    "apikey": "serve",
    "reviewer": "serve",
    "audit": "serve",
    "webhooks": "serve",
    "feedback": "serve",
}


def _with_recipe(parser: argparse.ArgumentParser, args, argv: list[str] | None):
    """``args`` again with ``--recipe``'s settings as the command's defaults (so options
    given on the command line win); ValueError on a key that is no option of it."""
    from facecheck.training.recipe import RECIPE_ONLY, load_recipe

    values = load_recipe(args.recipe)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = sub.choices[args.command]
    dests = {a.dest for a in command._actions}
    unknown = sorted(set(values) - dests - RECIPE_ONLY)
    if unknown:
        raise ValueError(f"recipe {args.recipe}: {', '.join(unknown)} are no options of it")
    command.set_defaults(**{k: v for k, v in values.items() if k in dests})
    args = parser.parse_args(argv)
    args.recipe_values = values
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "recipe", None):
        try:
            args = _with_recipe(parser, args, argv)
        except ValueError as exc:
            print(f"facecheck {args.command}: {exc}", file=sys.stderr)
            return 2
    module = importlib.import_module(f"facecheck.cli.{COMMANDS[args.command]}")
    handler = getattr(module, f"cmd_{args.command}")
    try:
        return handler(args)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"facecheck {args.command}: {exc}", file=sys.stderr)
        return 2


def entry() -> None:
    """The console script: :func:`main`, then for `check` an exit without the interpreter's
    teardown (unloading mediapipe, matplotlib and ONNX Runtime takes ~0.3 s, a fifth of a
    cold check); its only outputs, stdout and stderr, are flushed first."""
    rc = main()
    if len(sys.argv) > 1 and sys.argv[1] == "check":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    entry()
