"""`facecheck train`: fit a detector on a protocol's split and save its bundle."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from facecheck.cli.common import (
    _cache,
    _names,
    _needs_train_augment,
    _rule,
    _sampled,
    _with_synthetic,
)


def cmd_train(args) -> int:
    import numpy as np

    from facecheck.detector.pipeline import Detector
    from facecheck.evaluation.data import load_dataset, region_bits
    from facecheck.evaluation.groups import held_out_table
    from facecheck.evaluation.metrics import binary_metrics
    from facecheck.evaluation.model_card import write_model_card
    from facecheck.evaluation.protocols import build
    from facecheck.evaluation.weights import group_weights, source_weights

    _needs_train_augment(args)
    recipe = getattr(args, "recipe_values", None) or {}
    if recipe.get("needs_synthetic") and args.synthetic is None:
        raise ValueError(
            f"recipe {args.recipe} trains on synthetic fakes: add --synthetic DIR "
            "(`facecheck synthesize` writes it; make bundle does both)"
        )
    ds = _with_synthetic(load_dataset(args.data), args)
    proto = build(args.protocol, ds, args.seed)
    det = Detector(
        args.backbone,
        args.head,
        tta=args.tta,
        weights=args.weights,
        allow_download=args.allow_download,
        cache=_cache(args),
        head_params={"seed": args.seed},
        progress=not args.quiet,
        face_stage=args.face_stage,
        region_view=args.region_view,
        head_input=args.head_input,
    )
    train, val = proto.split.train, proto.split.val
    added = _added_training(args.add_manifest, proto) if args.add_manifest else None
    if added is not None:
        train = train.subset([*train.records, *added.records])
    t0 = time.perf_counter()
    # Pictures the face stage refuses (no face, several) are left out of training and of
    # threshold choice, and counted in the bundle.
    Ft = det.features(train.paths, train.hashes, skip_faceless=True)
    Fv = det.features(val.paths, val.hashes, skip_faceless=True)
    keep_t, keep_v = ~np.isnan(Ft).any(axis=1), ~np.isnan(Fv).any(axis=1)
    Ft, yt, Fv = Ft[keep_t], train.y[keep_t], Fv[keep_v]
    Rt = region_bits(train.records)[keep_t]
    val_y, val_sources = val.y[keep_v], val.sources[keep_v]
    augmented = 0
    threshold_rows = (Fv, val_y, val_sources)
    attrs = _names(args.balance_groups)
    weights = group_weights(train.records, attrs)
    if args.balance_sources:
        weights = weights * source_weights(train.records)
    weight_of = dict(zip(train.hashes, weights, strict=True))
    Wt = np.array([weight_of[h] for h in np.asarray(train.hashes)[keep_t]])
    if args.train_augment:  # one processed copy of each training image, through the face stage
        from facecheck.evaluation.evaluate import extract_perturbed, kept, regions_of, xy

        picked = _sampled(train, args.augment_sample, args.seed, args.augment_fraction)
        copies = extract_perturbed(picked, det.extractor, args.train_augment)
        Fa, ya, _ = xy(train, copies)
        augmented = len(kept(train, copies))
        Ft, yt = np.vstack([Ft, Fa]), np.concatenate([yt, ya])
        Wt = np.concatenate([Wt, [weight_of[r.sha256] for r in kept(train, copies)]])
        Rt = np.vstack([Rt, regions_of(train, copies)])
        if args.augment_validation:  # processed validation copies join the threshold choice
            from facecheck.evaluation.evaluate import validation_rows

            kept_hashes = [h for h, k in zip(val.hashes, keep_v, strict=True) if k]
            clean = dict(zip(kept_hashes, Fv, strict=True))
            picked_v = _sampled(val, args.augment_sample, args.seed, args.augment_fraction)
            copies_v = extract_perturbed(picked_v, det.extractor, args.train_augment)
            threshold_rows = validation_rows(val, clean, (args.train_augment, copies_v))
    weighted = bool(attrs) or args.balance_sources
    det.fit_features(Ft, yt, Rt, sample_weight=Wt if weighted else None)
    region_counts = _fit_regions(det, train) if not args.no_regions else None
    if args.calibrate:
        det.calibrate_from(Fv, val_y, fake_rate=args.fake_rate, features=True)
    Xth, yth, gth = threshold_rows
    thr = det.set_threshold_from(Xth, yth, rule=_rule(args), features=True, groups=gth)
    val_metrics = binary_metrics(val_y, det.score_features(Fv), thr)
    own, made = train.fingerprints()
    det.save(
        args.out,
        training={
            "protocol": proto.name,
            "title": proto.title,
            "seed": args.seed,
            "data": str(args.data),
            # The data's own images; synthetic fakes (made from them) have their own.
            "data_fingerprint": own,
            "train_counts": train.counts(),
            "val_counts": val.counts(),
            "left_out_by_face_stage": {
                "train": int((~keep_t).sum()),
                "val": int((~keep_v).sum()),
            },
            "region_training": region_counts,
            "train_augment": {
                "chain": args.train_augment,
                "copies": augmented,
                "per_source_label": args.augment_sample or "all",
                "fraction": args.augment_fraction,
                "validation": bool(args.augment_validation),
            }
            if args.train_augment
            else None,
            "synthetic": None
            if args.synthetic is None
            else {
                "folder": str(args.synthetic),
                "fingerprint": made,
                "train": sum(bool(r.parents) for r in train),
                "val": sum(bool(r.parents) for r in val),
            },
            "added": None
            if added is None
            else {"manifests": [str(m) for m in args.add_manifest], **added.counts()},
            "balance_groups": attrs or None,
            "balance_sources": bool(args.balance_sources),
            "recipe": {"name": str(args.recipe), **recipe} if recipe else None,
            "seconds": round(time.perf_counter() - t0, 1),
        },
        metrics_val=val_metrics,
        # Equal treatment on the held-out test split (scored for this table only; the
        # threshold is already fixed): how often each group's honest photos are flagged.
        equal_treatment=held_out_table(det, proto.split.test, seed=args.seed),
    )
    write_model_card(args.out, det)
    print(
        f"saved {args.out} ({det.version}); threshold {thr:.3f} chosen on validation "
        f"({_rule(args)})"
    )
    print(
        "validation: "
        + ", ".join(f"{k} {val_metrics[k]:.3f}" for k in ("recall", "precision", "roc_auc", "fpr"))
    )
    return 0


def _added_training(manifests: list[Path], proto):
    """Records of ``manifests`` for the training split, minus copies of val/test images."""
    from facecheck.evaluation.data import Dataset, load_dataset, with_hashes

    held_out = {r.sha256 for name in ("val", "test") for r in proto.split[name].records}
    held_out |= {r.sha256 for ds in proto.test_sets.values() for r in ds.records}
    records = [r for m in manifests for r in with_hashes(load_dataset(m)).records]
    kept = [r for r in records if r.sha256 not in held_out]
    if len(kept) < len(records):
        print(
            f"facecheck train: {len(records) - len(kept)} added images are copies of "
            "validation/test images and were left out",
            file=sys.stderr,
        )
    return Dataset(kept)


def _fit_regions(det, train) -> dict[str, int] | None:
    """Fit the detector's region scores on the training images that have region labels
    (rff reals and the rff fakes' file-name bits); None if there are no such fakes."""
    import numpy as np

    from facecheck.evaluation.data import region_targets

    Y, known = region_targets(train.records)
    labelled = train.subset(r for r, k in zip(train.records, known, strict=True) if k)
    n_fakes = sum(r.y for r in labelled)
    if n_fakes < 10:
        return None
    F = det.region_features(labelled.paths, labelled.hashes)
    ok = ~np.isnan(F).any(axis=1)
    try:
        det.fit_regions(F[ok], Y[known][ok])
    except ValueError as exc:  # e.g. a region replaced in fewer than two training fakes
        print(f"facecheck: no region scores ({exc})", file=sys.stderr)
        return None
    return {"images": int(ok.sum()), "fakes": int(labelled.y[ok].sum())}
