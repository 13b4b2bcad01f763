"""Where `explain`'s time goes on this machine (issue 6's 200 ms goal), for the shipped bundle.

    python benchmarks/explain_profile.py [--data ../shared/data] [--n 30] [--model BUNDLE]

For ``--n`` pictures (decoded beforehand, as `make bench` does), one at a time after a
warm-up: the whole `explain` + overlay PNG, and its parts timed separately: the detector's
pass (`check_with_extraction` with the map kept, i.e. the face stage, CLIP in ONNX Runtime,
pooling and the heads), the rest of `explain` (heatmap, boxes), drawing the overlay, and
writing the PNG at Pillow's default zlib level and at the level `explain.save_png` uses.
Then ONNX Runtime's own per-operator profile of the CLIP graph (batch 1): the share of the
pass spent in each operator type. Writes benchmarks/explain_profile.json.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from facecheck.detector.bundle import default_bundle_path
from facecheck.detector.explain import explain, render, save_png
from facecheck.detector.pipeline import Detector
from facecheck.evaluation.report import git_commit, machine_description
from facecheck.image.decode import load_image
from speed import sample_paths

HERE = Path(__file__).resolve().parent


def p50(times: list[float]) -> float:
    return round(1000 * float(np.median(times)), 1)


def operator_shares(graph: Path, size: int, repeats: int = 10) -> dict[str, float]:
    """ONNX Runtime's profile of ``graph`` (batch 1, ``size`` px): ms per pass by operator
    type."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.enable_profiling = True
    session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    x = {"x": np.random.default_rng(0).standard_normal((1, 3, size, size), np.float32)}
    for _ in range(repeats):
        session.run(None, x)
    trace = Path(session.end_profiling())
    per_op: collections.Counter[str] = collections.Counter()
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    trace.unlink()
    return {op: round(us / repeats / 1000, 2) for op, us in per_op.most_common(8)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--model", type=Path, default=None, help="a bundle (default: the shipped one)")
    ap.add_argument("--out", type=Path, default=HERE / "explain_profile.json")
    args = ap.parse_args()
    det = Detector.load(args.model or default_bundle_path())
    pictures = [load_image(p) for p in sample_paths(args.data, args.n + 1)]
    save_png(render(pictures[0].image, explain(det, pictures[0])), io.BytesIO())  # warm-up
    parts: dict[str, list[float]] = collections.defaultdict(list)
    for pic in pictures[1:]:
        t = time.perf_counter()
        save_png(render(pic.image, explain(det, pic)), io.BytesIO())
        parts["explain + PNG (whole)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        det.check_with_extraction([pic], ["x"], regions="all", keep_maps=True)
        parts["detector pass (face stage, CLIP, pooling, heads)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        exp = explain(det, pic)
        parts["explain (pass + heatmap + boxes)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        overlay = render(pic.image, exp)
        parts["render overlay"].append(time.perf_counter() - t)
        t = time.perf_counter()
        overlay.save(io.BytesIO(), format="PNG")
        parts["PNG, Pillow default level"].append(time.perf_counter() - t)
        t = time.perf_counter()
        save_png(overlay, io.BytesIO())
        parts["PNG, save_png (level 1)"].append(time.perf_counter() - t)
    model = det.extractor.backbone.model
    graph = getattr(model, "_onnx_file", None)
    result = {
        "commit": git_commit(),
        "machine": machine_description(),
        "model": det.version,
        "pictures": args.n,
        "p50_ms": {k: p50(v) for k, v in parts.items()},
        "onnxruntime_ms_by_operator": (
            operator_shares(graph, det.backbone.preprocessing.size) if graph else None
        ),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
