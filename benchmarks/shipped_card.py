"""Regenerate the shipped detector's model card with its equal-treatment table (issue 31).

    python benchmarks/shipped_card.py [--data ../shared/data] [--synthetic DIR]

Scores the shipped bundle's own held-out test split (protocol, seed and synthetic fakes as
its ``bundle.json`` records them, checked by fingerprint; the threshold is the bundle's,
untouched) in the precision it was fitted in, stores the table under ``equal_treatment``
in ``bundle.json`` (nothing else there changes) and rewrites ``MODEL_CARD.md`` from the
bundle, as ``facecheck train`` does for a new one. For a bundle whose table predates a
change to the table (e.g. recall CIs).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# The precision the bundle was fitted in, before facecheck picks one.
os.environ["FACECHECK_PRECISION"] = json.loads(
    (Path(__file__).parents[1] / "src/facecheck/resources/default/bundle.json").read_text()
)["backbone"].get("precision", "fp32")

from facecheck.detector.bundle import default_bundle_path
from facecheck.detector.pipeline import Detector
from facecheck.evaluation.data import load_dataset, with_synthetic
from facecheck.evaluation.groups import held_out_table
from facecheck.evaluation.model_card import write_model_card
from facecheck.evaluation.protocols import build
from facecheck.features.cache import FeatureCache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data", type=Path, default=Path(__file__).parents[1] / ".." / "shared" / "data"
    )
    ap.add_argument("--synthetic", type=Path, default=None, help="default: the cache's")
    args = ap.parse_args()
    bundle = default_bundle_path()
    cache = FeatureCache()
    det = Detector.load(bundle, cache=cache, progress=True)
    training = det.metadata["training"]
    seed = int(training["seed"])
    ds = load_dataset(args.data)
    if training.get("synthetic"):
        ds = with_synthetic(ds, args.synthetic or cache.directory / f"synthetic-seed{seed}")
    proto = build(str(training["protocol"]), ds, seed)
    own, made = proto.split.train.fingerprints()
    synthetic = (training.get("synthetic") or {}).get("fingerprint")
    if own != training["data_fingerprint"] or (synthetic and made != synthetic):
        raise SystemExit("the data's training split is not the one the bundle was fitted on")
    table = held_out_table(det, proto.split.test, seed=seed)
    path = bundle / "bundle.json"
    meta = json.loads(path.read_text())
    meta["equal_treatment"] = table
    path.write_text(json.dumps(meta, indent=2) + "\n")
    write_model_card(bundle, Detector.load(bundle))
    print(json.dumps({k: v for k, v in table.items() if k != "rows"}))


if __name__ == "__main__":
    main()
