"""A noise-residual stream: fixed high-pass (SRM) filters and their co-occurrence statistics.

A region pasted into a photo and blended brings another camera's and another JPEG history's
noise, and the blending smooths its border. Steganalysis's rich models (Fridrich and
Kodovsky, 2012) read such traces from the residuals of fixed high-pass filters, quantised
and truncated, through their histograms and co-occurrences; image-forensics detectors feed
the same filters to a network as a second input. This is a compact, weight-free version:

- four filters on the luma channel (second order horizontal and vertical, the 3x3 "square"
  and the 5x5 "KV" kernel), residuals on the 0-255 scale divided by a step of 3, rounded
  and truncated to -2..2;
- at every pixel, one-hot codes of the residual (5), of it and its right neighbour (25) and
  of it and the one below (25): 55 per filter, 220 channels;
- averaged over a 7 x 7 grid: that is the map (heatmaps and pooled region features read
  it, e.g. ``--region-view pooled``), and its mean the picture's features (histograms and
  co-occurrence matrices, each summing to 1).

Registered as the backbone ``srm`` (256 px, no resampling for the shared data's 256 px
crops); concatenate it with another: ``--backbones clip_vit_b16_layers+srm``. The filters are
this file's constants, so the cache names them by this file's hash.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TRUNCATE = 2  # residuals are clipped to -T..T after rounding
QUANT = 3.0  # quantisation step on the 0-255 scale: most residuals of a 256 px face fall
# inside -2..2 steps, so the truncated tails do not hold most of the mass
GRID = 7  # the map's cells per side
_LEVELS = 2 * TRUNCATE + 1

_SECOND = [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, -2, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
_SQUARE = [[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]]
_KV = [
    [-1, 2, -2, 2, -1],
    [2, -6, 8, -6, 2],
    [-2, 8, -12, 8, -2],
    [2, -6, 8, -6, 2],
    [-1, 2, -2, 2, -1],
]
# (kernel, divisor): each filter's residual is on about the pixels' own scale.
FILTERS = [
    (_SECOND, 2.0),
    ([list(r) for r in zip(*_SECOND, strict=True)], 2.0),  # the vertical one
    (_SQUARE, 4.0),
    (_KV, 12.0),
]
DIM = len(FILTERS) * (_LEVELS + 2 * _LEVELS**2)


class NoiseResiduals(nn.Module):
    """Pixels (n, 3, H, W) on the 0-255 scale -> features (n, 220); ``forward_features``
    gives the (n, 220, 7, 7) map they are the mean of."""

    def __init__(self) -> None:
        super().__init__()
        kernels = torch.tensor([k for k, _ in FILTERS], dtype=torch.float32)
        scale = torch.tensor([d for _, d in FILTERS], dtype=torch.float32)
        self.register_buffer("kernels", (kernels / scale.view(-1, 1, 1))[:, None])
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        y = (x * self.luma).sum(dim=1, keepdim=True)
        r = F.conv2d(y, self.kernels) / QUANT  # (n, filters, H-4, W-4)
        q = (torch.round(r).clamp(-TRUNCATE, TRUNCATE) + TRUNCATE).long()
        q0 = q[..., :-1, :-1]
        families = (
            (q0, _LEVELS),
            (q0 * _LEVELS + q[..., :-1, 1:], _LEVELS**2),  # with the right neighbour
            (q0 * _LEVELS + q[..., 1:, :-1], _LEVELS**2),  # with the one below
        )
        n, f, h, w = q0.shape
        # Each pixel's cell of the GRID x GRID grid, then one bincount per family: the share
        # of each code in each cell.
        rows = torch.arange(h, device=x.device) * GRID // h
        cols = torch.arange(w, device=x.device) * GRID // w
        cell = (rows[:, None] * GRID + cols[None, :]).expand(n, f, h, w)
        base = torch.arange(n * f, device=x.device).view(n, f, 1, 1) * GRID * GRID + cell
        per_cell = torch.bincount(cell[0, 0].reshape(-1), minlength=GRID * GRID).to(x.dtype)
        parts = []
        for codes, levels in families:
            counts = torch.bincount(
                (base * levels + codes).reshape(-1), minlength=n * f * GRID * GRID * levels
            ).to(x.dtype)
            parts.append(counts.view(n, f, GRID * GRID, levels) / per_cell.view(1, 1, -1, 1))
        out = torch.cat(parts, dim=-1)  # (n, filters, cells, 55)
        return out.permute(0, 1, 3, 2).reshape(n, -1, GRID, GRID)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3))
