"""Regenerate the shipped detector's model card with its equal-treatment table (issue 31).

    python benchmarks/shipped_card.py [--data ../shared/data]

The shipped bundle (``src/facecheck/resources/default``) was fitted before bundles carried
the table. This scores its own held-out test split (protocol and seed from its
``bundle.json``; the threshold is the bundle's, untouched) in fp32, stores the table under
``equal_treatment`` in ``bundle.json`` (nothing else there changes) and rewrites
``MODEL_CARD.md`` from the bundle, as ``facecheck train`` does for a new one.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ["FACECHECK_PRECISION"] = "fp32"  # the precision the bundle was fitted in

from facecheck.detector.bundle import default_bundle_path
from facecheck.detector.pipeline import Detector
from facecheck.evaluation.data import load_dataset
from facecheck.evaluation.groups import held_out_table
from facecheck.evaluation.model_card import write_model_card
from facecheck.evaluation.protocols import build
from facecheck.features.cache import FeatureCache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data", type=Path, default=Path(__file__).parents[1] / ".." / "shared" / "data"
    )
    args = ap.parse_args()
    bundle = default_bundle_path()
    det = Detector.load(bundle, cache=FeatureCache(), progress=True)
    training = det.metadata["training"]
    proto = build(str(training["protocol"]), load_dataset(args.data), int(training["seed"]))
    if proto.split.train.fingerprint() != training["data_fingerprint"]:
        raise SystemExit("the data's training split is not the one the bundle was fitted on")
    table = held_out_table(det, proto.split.test, seed=int(training["seed"]))
    path = bundle / "bundle.json"
    meta = json.loads(path.read_text())
    meta["equal_treatment"] = table
    path.write_text(json.dumps(meta, indent=2) + "\n")
    write_model_card(bundle, Detector.load(bundle))
    print(json.dumps({k: v for k, v in table.items() if k != "rows"}))


if __name__ == "__main__":
    main()
