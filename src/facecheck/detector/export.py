"""``facecheck export``: a bundle's whole scoring graph as one ONNX file.

The graph takes what the torch-free path prepares (the face crop resized to the backbone's
input, uint8, and each region box's pooling weights over the patch grid) and gives the
head's logit and the four region heads' logits: normalisation, the backbone up to its
last read layer, the class token, the region pooling and the linear heads, all inside.
:class:`facecheck.detector.runtime.ExportedDetector` runs it in ONNX Runtime without
importing torch; its scores equal the PyTorch fp32 path's to 1e-4 (``tests/test_export.py``).

What it covers: a CLIP backbone (fp32 weights), logistic heads on the picture or on the
picture and its pooled regions, logistic region heads, no test-time flip. Other bundles
are refused with the reason: they keep the PyTorch path.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facecheck.detector.bundle import model_version, read_bundle, scoring_digest
from facecheck.detector.pipeline import Detector
from facecheck.detector.runtime import GRAPH_FORMAT, exported_graph_path
from facecheck.heads.models import LogisticHead

# The ONNX operator set written: ONNX Runtime >= 1.14 runs it.
OPSET = 17


class ExportError(ValueError):
    """This bundle's scoring cannot be written as one ONNX graph (it keeps PyTorch)."""


def _linear(head: LogisticHead) -> tuple[torch.Tensor, torch.Tensor]:
    """A standardised logistic head folded into one affine map: (x - m) / s . w + b."""
    w = head.coef_ / head.scale_
    b = head.intercept_ - float(np.dot(head.mean_ / head.scale_, head.coef_))
    return torch.from_numpy(w.astype(np.float32)), torch.tensor(b, dtype=torch.float32)


class _ScoringGraph(nn.Module):
    """pixels (n, 3, S, S) uint8, region weights (n, 4, rows, cols) -> the head's logit (n,)
    and the region heads' logits (n, 4)."""

    def __init__(self, det: Detector):
        super().__init__()
        bb = det.backbone
        self.clip = bb.model
        prep = bb.preprocessing
        self.register_buffer("mean", torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.with_regions = det.with_regions
        w, b = _linear(det.head)  # type: ignore[arg-type]
        self.register_buffer("head_w", w)
        self.register_buffer("head_b", b)
        weights = torch.zeros(4, bb.dim)
        biases = torch.zeros(4)
        if det.regions is not None:
            for name, cols in det.regions._groups.items():
                rw, rb = _linear(det.regions.heads_[name])  # type: ignore[arg-type]
                for k in cols:
                    weights[k], biases[k] = rw, rb
        self.has_regions = det.regions is not None
        self.register_buffer("region_w", weights)
        self.register_buffer("region_b", biases)

    def forward(self, pixels: torch.Tensor, weights: torch.Tensor):
        x = (pixels.float() / 255.0 - self.mean) / self.std
        tokens = self.clip._torch_tokens(x, class_only=False)
        cls, patches = tokens[:, 0], tokens[:, 1:]
        # The same pooling as PooledRegionView's: each region's weighted mean of the cells.
        pooled = torch.einsum("npd,nrp->nrd", patches, weights.flatten(2))
        row = torch.cat([cls, pooled.flatten(1)], dim=1) if self.with_regions else cls
        logit = row @ self.head_w + self.head_b
        region_logits = (pooled * self.region_w).sum(-1) + self.region_b
        return logit, region_logits


def exportable(det: Detector) -> None:
    """ExportError unless :class:`_ScoringGraph` computes this detector's scores."""
    model = det.backbone.model
    why = []
    if not hasattr(model, "_torch_tokens") or getattr(model, "int8", ()):
        why.append(f"backbone {det.backbone_name} (only fp32 CLIP backbones export)")
    if not isinstance(det.head, LogisticHead):
        why.append(f"head {det.head_kind} (only the logistic head exports)")
    if det.regions is not None and not all(
        isinstance(h, LogisticHead) for h in det.regions.heads_.values()
    ):
        why.append("region heads other than logistic")
    if det.regions is not None and det.region_view != "pooled":
        why.append("region scores from crops (only pooled regions export)")
    if det.tta:
        why.append("test-time flip")
    if why:
        raise ExportError("cannot export this bundle: " + "; ".join(why))


def export(
    directory: str | Path | None = None,
    out: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
) -> Path:
    """Write bundle ``directory``'s scoring graph (default: the shipped bundle's, into the
    cache; any other bundle's, into its own folder) and return where it went."""
    folder, meta = read_bundle(directory)
    det = Detector.load(folder)
    exportable(det)
    graph = _ScoringGraph(det).eval()  # fp32 (bf16 autocast is not traced)
    grid = det.backbone.model.grid
    size = det.backbone.preprocessing.size
    example = (
        torch.zeros(1, 3, size, size, dtype=torch.uint8),
        torch.full((1, 4, *grid), 1.0 / (grid[0] * grid[1])),
    )
    names = {"in": ["pixels", "region_weights"], "out": ["logit", "region_logits"]}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            example,
            buf,
            input_names=names["in"],
            output_names=names["out"],
            dynamic_axes={k: {0: "n"} for k in (*names["in"], *names["out"])},
            opset_version=OPSET,
            dynamo=False,
        )
    import onnx
    import onnxruntime as ort

    path = Path(out) if out else exported_graph_path(folder, meta, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.name}.{os.getpid()}.part")  # readers never see half a file
    # Saved after ONNX Runtime's portable ("extended") fusions, so that a process loading
    # it skips them: a session in ~0.2 s instead of ~1 s, a cold `check`'s largest cost.
    # (The "all" level adds CPU-specific layouts, which are made at load time instead.)
    raw = path.with_name(f"{path.name}.{os.getpid()}.raw")
    raw.write_bytes(buf.getvalue())
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(part)
    try:
        ort.InferenceSession(str(raw), opts, providers=["CPUExecutionProvider"])
    finally:
        raw.unlink()
    model = onnx.load(str(part))
    onnx.helper.set_model_props(
        model,
        {
            "facecheck_format": GRAPH_FORMAT,
            "model_version": model_version(meta),
            "scoring_digest": scoring_digest(folder, meta),
            "has_regions": str(int(graph.has_regions)),
            "grid": f"{grid[0]}x{grid[1]}",
            "onnxruntime": ort.__version__,
        },
    )
    onnx.save(model, str(part))
    part.replace(path)
    return path
