"""Reviewers' decisions back into training, and how often they agreed with the model.

:func:`export` writes every decided case whose image is still kept as a dataset folder that
``facecheck train --add-manifest`` accepts: ``images/<check id>.<ext>`` and a
``manifest.jsonl`` whose label is the reviewer's decision (source ``feedback``). The file
names are the service's own ids, never anything a client sent.

:func:`agreement` tabulates, per period and model version, how many cases were decided and
how often the reviewer agreed with what the model leaned to (a ``review`` verdict leans fake:
its score was at or above the threshold).
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from facecheck.service.scoring import sniff
from facecheck.service.store import Store, iso

SOURCE = "feedback"
_EXT = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/bmp": "bmp",
    "image/tiff": "tif",
}


@dataclass(frozen=True)
class ExportSummary:
    manifest: Path
    exported: int
    real: int
    fake: int
    without_image: int


def export(store: Store, out: Path) -> ExportSummary:
    """Write decided cases with their images as ``out/manifest.jsonl`` + ``out/images``."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    counts = {"real": 0, "fake": 0}
    missing = 0
    lines = []
    for case in store.decided_cases():
        found = store.image(case.check_id)
        if found is None:  # deleted after the retention period
            missing += 1
            continue
        data, _media = found
        ext = _EXT.get(sniff(data) or "", "bin")
        rel = f"images/{case.check_id}.{ext}"
        (out / rel).write_bytes(data)
        counts[str(case.decision)] += 1
        lines.append(
            json.dumps(
                {
                    "path": rel,
                    "label": case.decision,
                    "source": SOURCE,
                    "case_id": case.id,
                    "model_verdict": case.verdict,
                    "fake_probability": case.fake_probability,
                    "model_version": case.model_version,
                    "decided_by": case.decided_by,
                    "decided_at": iso(case.decided_at),
                }
            )
        )
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(line + "\n" for line in lines))
    return ExportSummary(manifest, len(lines), counts["real"], counts["fake"], missing)


def _model_lean(verdict: str) -> str | None:
    """What the model said about the image: review and fake both lean fake."""
    return {"fake": "fake", "review": "fake", "real": "real"}.get(verdict)


def agreement(store: Store, by: str = "week") -> list[dict[str, object]]:
    """Per period (day, week or month of the decision) and model version: decided cases,
    decided fake, and the share where the reviewer agreed with the model's lean."""
    fmt = {"day": "%Y-%m-%d", "week": "%G-W%V", "month": "%Y-%m"}
    if by not in fmt:
        raise ValueError(f"by must be day, week or month, not {by!r}")
    cells: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for case in store.decided_cases():
        period = case.decided_at.strftime(fmt[by]) if case.decided_at else "unknown"
        cell = cells[(period, case.model_version)]
        cell[0] += 1
        cell[1] += case.decision == "fake"
        cell[2] += _model_lean(case.verdict) == case.decision
    return [
        {
            "period": period,
            "model_version": version,
            "decided": n,
            "decided_fake": fakes,
            "agreed": agreed,
            "agreement": round(agreed / n, 4),
        }
        for (period, version), (n, fakes, agreed) in sorted(cells.items())
    ]


def agreement_csv(rows: list[dict[str, object]]) -> str:
    buf = io.StringIO()
    fields = ["period", "model_version", "decided", "decided_fake", "agreed", "agreement"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
