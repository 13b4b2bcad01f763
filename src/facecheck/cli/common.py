"""Helpers the commands share: option parsing, the cache, records of protocols."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path


def _rule(args) -> str:
    """The validation threshold rule, from --target-recall, --review-budget or --threshold-rule."""
    if getattr(args, "target_recall", None) is not None:
        return f"recall:{args.target_recall:g}"
    if getattr(args, "review_budget", None) is not None:
        return f"budget:{args.review_budget:g}"
    if getattr(args, "max_fpr", None) is not None:
        return f"fpr:{args.max_fpr:g}"
    return args.threshold_rule


def _cache(args):
    from facecheck.features.cache import FeatureCache

    return FeatureCache(args.cache_dir) if getattr(args, "cache_dir", None) else FeatureCache()


def _names(text: str, *, upper: bool = False) -> list[str]:
    """A comma-separated option as a list of names."""
    return [t.strip().upper() if upper else t.strip() for t in text.split(",") if t.strip()]


def _records_of(ds, protocols, splits: tuple[str, ...], only: list[str] | None = None):
    """The unique images (by content hash) of these splits of these protocols; with "test",
    also every image of their named test sets (P7's held-out sources lie outside the split)."""
    picked = {}
    for p in protocols:
        if only is not None and p.name not in only:
            continue
        parts = [p.split[s] for s in splits]
        if "test" in splits:
            parts += list(p.test_sets.values())
        picked.update({r.sha256: r for part in parts for r in part})
    return ds.subset(picked.values())


def _expand(paths: list[Path]) -> list[Path]:
    from facecheck.image.decode import IMAGE_SUFFIXES

    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)  # missing or odd files are reported per file by the pipeline
    return out


RUNTIMES = ("auto", "onnx", "torch")


def load_scorer(
    directory: str | Path | None = None,
    *,
    runtime: str = "auto",
    cache_dir: str | Path | None = None,
    batch: bool = False,
):
    """What scores a bundle here: its exported graph in ONNX Runtime (``onnx``; ``auto`` when
    the bundle has a current one: torch is then never imported) or the PyTorch
    :class:`~facecheck.detector.pipeline.Detector` (``torch``; ``auto`` otherwise). Both give
    the same verdicts (scores to 1e-4 in fp32).

    ``batch`` (many images, where throughput counts and start-up does not): ``auto`` takes
    PyTorch on a CPU that multiplies bfloat16 natively, whose bf16 passes run ~1.5x the
    graph's fp32 ones (benchmarks/score_scale.md); elsewhere the two run the same fp32
    ONNX Runtime pass."""
    from facecheck.backbones.cpu import resolve_precision
    from facecheck.detector.bundle import BundleError

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime is one of {', '.join(RUNTIMES)}, not {runtime!r}")
    if runtime == "auto" and batch and resolve_precision() == "bf16":
        runtime = "torch"
    if runtime != "torch":
        try:
            from facecheck.detector.runtime import ExportedDetector

            return ExportedDetector.load(directory, cache_dir=cache_dir)
        except (BundleError, ImportError):
            if runtime == "onnx":
                raise
    from facecheck.detector.pipeline import Detector
    from facecheck.features.cache import FeatureCache

    return Detector.load(directory, cache=FeatureCache(cache_dir) if cache_dir else None)


def _load_detector(args):
    """The bundle ``--model`` names (with ``--cache-dir``'s cache if given), or None after
    printing why it cannot be loaded (exit status 2). Commands with ``--runtime`` (check,
    score) get its exported graph in ONNX Runtime where it has one (no torch imported);
    the others the PyTorch detector."""
    from facecheck.detector.bundle import BundleError

    runtime = getattr(args, "runtime", "torch")
    batch = getattr(args, "command", "") == "score"
    try:
        return load_scorer(args.model, runtime=runtime, cache_dir=args.cache_dir, batch=batch)
    except (BundleError, OSError, KeyError, RuntimeError) as exc:
        print(f"facecheck: cannot load the detector: {exc}", file=sys.stderr)
        return None


def _detector_and_files(args):
    """The bundle and the image files of `check` / `explain`; (None, []) after printing why
    when either is missing (exit status 2)."""
    det = _load_detector(args)
    if det is None:
        return None, []
    files = _expand(args.images)
    if not files:
        print("facecheck: no images found", file=sys.stderr)
    return det, files


def _reencoded(backbone, quality: int | None):
    """The backbone with every picture re-encoded as JPEG ``quality`` first (None: as is)."""
    if not quality:
        return backbone
    if not 1 <= quality <= 100:
        raise ValueError(f"--reencode takes a JPEG quality 1-100, not {quality}")
    prep = dataclasses.replace(backbone.preprocessing, jpeg_quality=quality)
    return dataclasses.replace(backbone, preprocessing=prep)


def _sampled(ds, n: int, seed: int, fraction: float = 1.0):
    """A seeded draw of each source and label: at most ``n`` records (all if n <= 0), and
    of those the share ``fraction`` (the same share of every stratum)."""
    from facecheck.evaluation.data import draw

    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"a fraction must be in (0, 1], got {fraction}")
    if n <= 0 and fraction == 1.0:
        return ds
    strata: dict[tuple[str, str], list] = {}
    for r in ds:
        strata.setdefault((r.source, r.label), []).append(r)
    picked = []
    for key in sorted(strata):
        k = len(strata[key]) if n <= 0 else min(n, len(strata[key]))
        picked += draw(strata[key], max(1, round(k * fraction)), seed=seed)
    return ds.subset(picked)


def _needs_train_augment(args) -> None:
    """``--augment-validation`` processes validation as ``--train-augment`` does training."""
    if args.augment_validation and not args.train_augment:
        raise ValueError("--augment-validation needs --train-augment (the chain to apply)")


def _with_synthetic(ds, args):
    """``ds`` plus ``--synthetic``'s fakes, if given."""
    if getattr(args, "synthetic", None) is None:
        return ds
    from facecheck.evaluation.data import with_synthetic

    return with_synthetic(ds, args.synthetic)
