"""Fill the feature cache for ``clip_vit_b16_l8`` from cached ``clip_vit_b16_layers`` rows.

    python benchmarks/clip_l8_cache.py [--check 6]

``clip_vit_b16_layers`` concatenates the post-layer-norm tokens of layers 8 and 12 (in that
order) in every part of a feature row (the image's class tokens, each region's pooled patch
tokens, each crop's class tokens), and pooling is linear per channel, so the layer-8 half of
each 1,536-wide part is exactly what ``clip_vit_b16_l8`` computes. Copying it saves an hour
of CLIP passes on 2 CPU cores. Before writing anything the script extracts ``--check``
cached images afresh with ``clip_vit_b16_l8`` (no cache) and stops unless the copies match
them to 1e-4. On a machine without the 8 + 12 cache, plain extraction fills it instead.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

import numpy as np

from facecheck.backbones.clip import WIDTH
from facecheck.backbones.registry import load_backbone
from facecheck.evaluation.data import load_dataset
from facecheck.features.cache import FeatureCache
from facecheck.features.extract import FeatureExtractor
from facecheck.features.views import PooledRegionView
from facecheck.image.faces import FaceStage

HERE = Path(__file__).resolve().parent


def layer8(vec: np.ndarray) -> np.ndarray:
    """The layer-8 half of each (layer 8, layer 12) part of a row."""
    return vec.reshape(-1, 2, WIDTH)[:, 0].ravel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--check", type=int, default=6, help="images re-extracted to compare")
    args = ap.parse_args()
    cache = FeatureCache()
    src, dst = load_backbone("clip_vit_b16_layers"), load_backbone("clip_vit_b16_l8")
    src_key, dst_key = src.cache_key(False), dst.cache_key(False)

    # The check: the shipped detector's view (pooled regions + image, face stage on).
    ds = load_dataset(args.data)
    records = [r for r in ds.records if r.source == "rff"][:: max(1, 2000 // args.check)]
    records = records[: args.check]
    view = PooledRegionView(with_image=True)
    stage = FaceStage()
    old = FeatureExtractor(src, cache, face_stage=stage, view=view, progress=False)
    new = FeatureExtractor(dst, None, face_stage=stage, view=view, progress=False)
    paths, hashes = [r.path for r in records], [r.sha256 for r in records]
    copied = np.stack([layer8(v) for v in old.extract(paths, hashes).features])
    fresh = new.extract(paths, hashes).features
    gap = float(np.nanmax(np.abs(copied - fresh)))
    print(f"{len(records)} images: largest difference copy vs fresh {gap:.2e}")
    if not gap < 1e-4:
        sys.exit("the layer-8 half of the cached rows is not what clip_vit_b16_l8 computes")

    conn = sqlite3.connect(cache.path)
    keys = [
        k for (k,) in conn.execute("SELECT DISTINCT key FROM features") if k.startswith(src_key)
    ]
    total = 0
    for key in keys:
        rows = conn.execute("SELECT sha256, vec FROM features WHERE key=?", (key,)).fetchall()
        cache.put_many(
            dst_key + key[len(src_key) :],
            {h: layer8(np.frombuffer(b, np.float32)) for h, b in rows},
        )
        total += len(rows)
        print(f"{len(rows):6d} rows  {key[len(src_key) :] or '(no view)'}")
    print(f"copied {total} rows into {dst_key}")


if __name__ == "__main__":
    main()
