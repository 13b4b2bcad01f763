"""Speed of facecheck on this machine: feature extraction throughput, `check` and `explain`
latency.

    python benchmarks/speed.py [--data ../shared/data] [--n 256] [--out benchmarks/speed.json]

Extraction is measured uncached (no feature cache), including file read and JPEG decode,
after a warm-up batch. `check` latency is one image per call through the shipped default
detector (decode + face stage + features + head + verdict), after the model is loaded,
uncached. `explain` latency is the same for the heatmap, region scores and the overlay PNG
(what a reviewer's page asks for), from a decoded picture. The face stage is also timed alone,
on the data's crops and on selfie-like pictures.
Run it on a quiet machine: the figures are only as steady as the CPU is idle.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from facecheck.backbones.registry import face_stage_for, load_backbone
from facecheck.detector.bundle import default_bundle_path
from facecheck.detector.pipeline import Detector
from facecheck.evaluation.data import load_manifest
from facecheck.evaluation.report import machine_description
from facecheck.features.extract import FeatureExtractor


def sample_paths(data: Path, n: int, seed: int = 0) -> list[Path]:
    paths = load_manifest(data / "manifest.jsonl").paths
    return random.Random(seed).sample(paths, n)


def extraction(backbone: str, paths: list[Path]) -> dict[str, float | int | str | None]:
    """Uncached features of ``paths``: the pictures as given, except for a backbone that reads
    its own window of the aligned face (that one's face stage is timed with it)."""
    stage = face_stage_for(backbone, "auto")
    framed = stage.mode == "align"
    ex = FeatureExtractor(
        load_backbone(backbone), None, progress=False, face_stage=stage if framed else None
    )
    ex.extract(paths[: ex.batch_size])  # warm-up: traces the network (or exports it to ONNX)
    t = time.perf_counter()
    ex.extract(paths)
    dt = time.perf_counter() - t
    return {
        "images": len(paths),
        "batch_size": ex.batch_size,
        "runtime": "onnxruntime" if ex.onnxruntime else "torch",
        "face_stage": stage.key if framed else None,
        "seconds": round(dt, 2),
        "images_per_s": round(len(paths) / dt, 1),
    }


def face_stage(paths: list[Path]) -> dict[str, dict[str, float]]:
    """The face stage alone, per decoded picture: the data's tight crops (passthrough), and
    the same faces at 300 px in a 1200x900 picture (found, refined, aligned and cropped)."""
    from PIL import Image

    from facecheck.image.decode import load_image
    from facecheck.image.faces import FaceStage

    stage = FaceStage()
    crops = [load_image(p).image for p in paths]
    canvases = []
    for k, c in enumerate(crops):
        canvas = Image.new("RGB", (1200, 900), (40 + k % 100, 90, 140))
        canvas.paste(c.resize((300, 300)), (450, 250))
        canvases.append(canvas)
    out = {}
    for name, pictures in (("tight_crops", crops), ("face_in_1200x900", canvases)):
        stage.analyse(pictures[0])  # warm-up: loads the models
        times, actions = [], {}
        for pic in pictures:
            t = time.perf_counter()
            try:
                _, a = stage(pic)
                action = a.action
            except Exception as exc:  # no_face / multiple_faces are outcomes, timed too
                action = getattr(exc, "code", type(exc).__name__)
            times.append((time.perf_counter() - t) * 1000)
            actions[action] = actions.get(action, 0) + 1
        arr = np.asarray(times)
        out[name] = {
            "images": len(pictures),
            "p50_ms": round(float(np.percentile(arr, 50)), 1),
            "p95_ms": round(float(np.percentile(arr, 95)), 1),
            "outcomes": actions,
        }
    return out


def explain_latency(det: Detector, paths: list[Path]) -> dict[str, float]:
    """`explain` + the overlay PNG for one decoded picture at a time (no feature cache)."""
    import io

    from facecheck.detector.explain import explain, render, save_png
    from facecheck.image.decode import load_image

    pictures = [load_image(p) for p in paths]
    times = []
    for i, pic in enumerate([pictures[0], *pictures]):
        t = time.perf_counter()
        save_png(render(pic.image, explain(det, pic)), io.BytesIO())
        if i:  # the first call builds what the map pass needs
            times.append((time.perf_counter() - t) * 1000)
    arr = np.asarray(times)
    return {
        "images": len(paths),
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p95_ms": round(float(np.percentile(arr, 95)), 1),
        "model": det.version,
    }


def check_latency(paths: list[Path]) -> tuple[dict[str, float], Detector]:
    t = time.perf_counter()
    det = Detector.load(default_bundle_path())
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    det.check(paths[:1])  # the first call traces and freezes the network
    first_s = time.perf_counter() - t
    det.check(paths[1:3])  # warm-up
    times = []
    for p in paths:
        t = time.perf_counter()
        det.check([p])
        times.append((time.perf_counter() - t) * 1000)
    arr = np.asarray(times)
    return {
        "images": len(paths),
        "model_load_s": round(load_s, 2),
        "first_check_s": round(first_s, 2),
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p95_ms": round(float(np.percentile(arr, 95)), 1),
        "mean_ms": round(float(arr.mean()), 1),
        "model": det.version,
    }, det


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--n", type=int, default=256, help="images for throughput")
    ap.add_argument("--latency-n", type=int, default=100, help="images for latency")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/speed.json"))
    args = ap.parse_args()
    paths = sample_paths(args.data, args.n)
    extract = {bb: extraction(bb, paths) for bb in ("efficientnet_lite0", "mobilenet_v2")}
    # CLIP runs ~15x slower than Lite0 here: a quarter of the images give a steady figure.
    for clip in (
        "clip_vit_b16_layers",
        "clip_vit_b16_l8",
        "clip_vit_b16_l8_int8_attn_fc1",
        "clip_vit_b16_l8_window",
    ):
        extract[clip] = extraction(clip, paths[: args.n // 4])
    check, det = check_latency(paths[: args.latency_n])
    result = {
        "machine": machine_description(),
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "extraction": extract,
        "check_latency": check,
        "explain_latency": explain_latency(det, paths[: args.latency_n // 2]),
        "face_stage": face_stage(paths[: args.latency_n]),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
