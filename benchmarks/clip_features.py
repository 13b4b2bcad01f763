"""Extract CLIP ViT-B/16 features for the whole data set into the feature cache (resumable).

    python benchmarks/clip_features.py [--data ../shared/data] [--limit N]

CLIP costs about 0.3 s per image on the 2-core CPU (3.6 images/s: about an hour for the
13,286 images; a GPU is used when there is one), so this runs once, ahead of `facecheck evaluate
--backbones clip_vit_b16,...`, which then finds every vector in the cache. It says how long
it will take before it starts, commits every batch (a killed run resumes where it stopped)
and goes source by source, smallest first (gan, rff, utkface), so a partial run already
serves the protocols without UTKFace.

One forward pass serves both CLIP backbones: ``clip_vit_b16_layers`` is the normalised class
tokens of layers 8 and 12, and ``clip_vit_b16``'s 512-d embedding is CLIP's projection of the
layer-12 one; the embedding is derived from it (checked against the model on a few images)
and cached under its own key. The face stage is off here: the data are tight crops, which it
passes through unchanged, and the passthrough and stage-less paths share their features.
Writes benchmarks/clip_features.json (throughput, machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from facecheck.backbones.clip import WIDTH  # noqa: E402
from facecheck.backbones.registry import CLIP_LAYERS, load_backbone, seconds_per_image  # noqa: E402
from facecheck.evaluation.data import load_dataset, with_hashes  # noqa: E402
from facecheck.features.cache import FeatureCache  # noqa: E402
from facecheck.features.extract import FeatureExtractor  # noqa: E402

ORDER = ("gan", "rff", "utkface")  # folders, smallest first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--limit", type=int, default=0, help="only the first N images (a trial)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "clip_features.json")
    args = ap.parse_args()
    assert CLIP_LAYERS[-1] == 12, "the embedding is derived from the layer-12 class token"

    cache = FeatureCache()
    ds = with_hashes(load_dataset(args.data))
    records = sorted(ds.records, key=lambda r: ORDER.index(r.path.relative_to(args.data).parts[0]))
    if args.limit:
        records = records[: args.limit]
    layers = load_backbone("clip_vit_b16_layers")
    embed = load_backbone("clip_vit_b16")
    ex_layers = FeatureExtractor(layers, cache, batch_size=args.batch_size, progress=True)
    ex_embed = FeatureExtractor(embed, cache, batch_size=args.batch_size, progress=False)
    proj = embed.model.visual_projection.weight.detach().cpu().numpy().astype(np.float64)

    # The derivation, checked against the model's own embedding on three images.
    few = [r.path for r in records[:3]]
    direct = ex_embed.extract(few).features if few else np.zeros((0, 512))
    tokens = FeatureExtractor(layers, None, progress=False).extract(few).features
    derived = tokens[:, -WIDTH:].astype(np.float64) @ proj.T
    if few and np.abs(derived - direct).max() > 1e-3 * np.abs(direct).max():
        raise SystemExit("the embedding derived from the layer-12 token differs from CLIP's")

    todo = [r for r in records if r.sha256 not in cache.get_many(ex_layers.key, [r.sha256])]
    dev = ex_layers.device
    per_image = seconds_per_image("clip_vit_b16", dev.type)
    print(
        f"CLIP features: {len(records)} images, {len(records) - len(todo)} already cached, "
        f"{len(todo)} to extract on {dev.type} (about {len(todo) * per_image / 60:.0f} min)",
        flush=True,
    )
    t0 = time.perf_counter()
    step = 512  # the embeddings are derived and cached every `step` images
    for i in range(0, len(todo), step):
        part = todo[i : i + step]
        res = ex_layers.extract([r.path for r in part], [r.sha256 for r in part])
        ok = res.ok
        emb = res.features[ok][:, -WIDTH:].astype(np.float64) @ proj.T
        cache.put_many(
            ex_embed.key,
            {h: v.astype(np.float32) for h, v in zip(np.array(res.hashes)[ok], emb, strict=True)},
        )
    seconds = time.perf_counter() - t0
    # Images whose tokens were cached by an earlier, interrupted run but not their embedding.
    have = cache.get_many(ex_embed.key, [r.sha256 for r in records])
    missing = [r for r in records if r.sha256 not in have]
    if missing:
        tok = cache.get_many(ex_layers.key, [r.sha256 for r in missing])
        cache.put_many(
            ex_embed.key,
            {
                h: (v[-WIDTH:].astype(np.float64) @ proj.T).astype(np.float32)
                for h, v in tok.items()
            },
        )
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {dev.type}",
        "images": len(records),
        "extracted": len(todo),
        "seconds": round(seconds, 1),
        "seconds_per_image": round(seconds / len(todo), 3) if todo else None,
        "batch_size": ex_layers.batch_size,
        "cached": {k: cache.count(k) for k in (ex_layers.key, ex_embed.key)},
    }
    print(json.dumps(summary, indent=2))
    if not args.limit and todo:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
