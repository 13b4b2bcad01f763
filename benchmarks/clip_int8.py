"""Would INT8 bring CLIP's pass (and so ``explain``) under 200 ms on CPU? (issue 6)

    python benchmarks/clip_int8.py [--data ../shared/data] [--images 12]

PyTorch's dynamic INT8 quantisation (per-channel int8 weights, activations quantised per
tensor at run time, x86 kernels) applied to chosen linear layers of the CLIP ViT-B/16 the
shipped detector reads. For each choice: how far the features move from fp32 (cosine of the
class tokens of layers 8 + 12, and of the patch tokens that the region features and heatmaps
pool), and the latency of one picture's pass (``features_and_map``, batch 1, the threads
torch is given; median of ``--images`` pictures after 3 warm-up passes). Head and threshold
are fitted on fp32 features, so a choice is only usable if its features stay at fp32's
(cosine ~1), or after refitting and re-measuring P1/P6 on its own features.

Writes benchmarks/clip_int8.md and .json. About 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from facecheck.backbones.clip import CLIP_MEAN, CLIP_STD, load_clip, onnx_file
from facecheck.evaluation.report import git_commit, machine_description

HERE = Path(__file__).resolve().parent
ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
CHOICES = {
    "fp32 (shipped)": (),
    "q, k, v projections": ("q_proj", "k_proj", "v_proj"),
    "attention (q, k, v, out)": ATTENTION,
    "MLP fc1": ("fc1",),
    "MLP fc2": ("fc2",),
    "attention + fc1": (*ATTENTION, "fc1"),
    "every linear layer": (*ATTENTION, "fc1", "fc2"),
}


def quantised(model: nn.Module, parts: tuple[str, ...]) -> nn.Module:
    """A copy of ``model`` with the named linear layers of every block dynamically INT8."""
    out = copy.deepcopy(model)
    for block in out.vision_model.encoder.layers:
        for part in parts:
            owner = block.mlp if part.startswith("fc") else block.self_attn
            q = quantize_dynamic(
                nn.Sequential(getattr(owner, part)),
                {nn.Linear: per_channel_dynamic_qconfig},
                dtype=torch.qint8,
            )
            setattr(owner, part, q[0])
    return out


def pixels(path: Path) -> torch.Tensor:
    im = Image.open(path).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
    x = (np.asarray(im, np.float32) / 255 - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--out", type=Path, default=HERE / "clip_int8.md")
    args = ap.parse_args()
    half = args.images // 2
    paths = sorted((args.data / "rff" / "fake").glob("*.jpg"))[:half]
    paths += sorted((args.data / "rff" / "real").glob("*.jpg"))[: args.images - half]
    x = torch.stack([pixels(p) for p in paths])
    fp32 = load_clip(onnx_file(), layers=(8, 12))
    rows = {}
    with torch.inference_mode():
        ref_cls, ref_map = fp32.features_and_map(x)
        for name, parts in CHOICES.items():
            model = quantised(fp32, parts) if parts else fp32
            cls, fmap = model.features_and_map(x)
            cos_cls = nn.functional.cosine_similarity(cls, ref_cls, dim=1)
            cos_map = nn.functional.cosine_similarity(fmap.flatten(2), ref_map.flatten(2), dim=1)
            for i in range(3):
                model.features_and_map(x[i : i + 1])
            times = []
            for i in range(len(x)):
                t = time.perf_counter()
                model.features_and_map(x[i : i + 1])
                times.append(time.perf_counter() - t)
            rows[name] = {
                "layers": list(parts),
                "cls_cosine_mean": float(cos_cls.mean()),
                "cls_cosine_min": float(cos_cls.min()),
                "patch_cosine_mean": float(cos_map.mean()),
                "patch_cosine_p01": float(torch.quantile(cos_map.flatten(), 0.01)),
                "ms_p50": 1000 * float(np.median(times)),
            }
            print(name, rows[name], flush=True)
    result = {
        "images": len(paths),
        "threads": torch.get_num_threads(),
        "commit": git_commit(),
        "machine": machine_description(),
        "choices": rows,
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.write_text(render(result))
    print(f"wrote {args.out}")


def render(r: dict) -> str:
    lines = [
        "# CLIP ViT-B/16 with dynamic INT8 layers: feature drift and latency (issue 6)",
        "",
        f"`python benchmarks/clip_int8.py` ({r['images']} rff pictures, half fake; commit "
        f"{r['commit']}; {r['machine']}; {r['threads']} torch threads). Cosine against the fp32 "
        "pass the shipped detector was fitted on: class tokens of layers 8 + 12, and patch "
        "tokens (mean, and the 1st percentile over all patches). Latency: one picture's pass "
        "(class tokens and patch map), batch 1, median.",
        "",
        "| INT8 layers (every block) | class tokens: cosine mean / min "
        "| patch tokens: cosine mean / 1st pct | pass p50 (ms) |",
        "|---|---|---|---|",
    ]
    for name, v in r["choices"].items():
        lines.append(
            f"| {name} | {v['cls_cosine_mean']:.4f} / {v['cls_cosine_min']:.4f} "
            f"| {v['patch_cosine_mean']:.4f} / {v['patch_cosine_p01']:.4f} | {v['ms_p50']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
