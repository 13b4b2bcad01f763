"""`facecheck evaluate`: protocols x backbones x heads, the report."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from facecheck.cli.common import (
    _cache,
    _names,
    _needs_train_augment,
    _records_of,
    _reencoded,
    _rule,
    _sampled,
    _with_synthetic,
)


def cmd_evaluate(args) -> int:
    if args.model is not None:
        return _evaluate_bundle(args)
    import numpy as np

    from facecheck import __version__
    from facecheck.backbones.cpu import resolve_precision
    from facecheck.backbones.registry import face_stage_for, load_backbone, resolve_name
    from facecheck.detector.pipeline import check_head_input, head_view, input_params
    from facecheck.evaluation.data import load_dataset
    from facecheck.evaluation.evaluate import (
        evaluate_localisation,
        evaluate_protocol,
        extract_all,
        extract_perturbed,
    )
    from facecheck.evaluation.protocols import build, expand
    from facecheck.evaluation.report import git_commit, machine_description, write_report
    from facecheck.features.extract import FeatureExtractor
    from facecheck.image.regions import REGIONS

    _needs_train_augment(args)
    t0 = time.perf_counter()
    run = args.run_name or time.strftime("%Y%m%d-%H%M%S")
    out = args.out or Path("reports") / run
    ds = _with_synthetic(load_dataset(args.data), args)
    names = expand(_names(args.protocols, upper=True))
    # P6 (localisation) is measured on P1's split with the first backbone and head.
    p6 = "P6" in names
    protocols = _built([p for p in names if p != "P6"], ds, args)
    heads = _names(args.heads)
    # "a+b" concatenates the backbones' features (each extracted and cached on its own).
    backbones = ["+".join(resolve_name(m) for m in b.split("+")) for b in _names(args.backbones)]
    extra = [build("P1", ds, args.seed)] if p6 else []
    used = _records_of(ds, protocols + extra, ("train", "val", "test"))
    localisation = []
    cache = _cache(args)
    cv_on = _names(args.cv_protocols, upper=True)
    perturbations, p5_on, p5_tests = _processing(args, ds, protocols)
    # Training augmentation is part of the recipe: every protocol's training split gets it.
    # (with --augment-validation, the same share of validation, drawn on its own so that
    # the training draw does not change).
    p5_train = _sampled(
        _records_of(ds, protocols, ("train",)),
        args.augment_sample,
        args.seed,
        args.augment_fraction,
    )
    if args.augment_validation:
        val = _sampled(
            _records_of(ds, protocols, ("val",)),
            args.augment_sample,
            args.seed,
            args.augment_fraction,
        )
        p5_train = p5_train.subset([*p5_train, *val])
    results, errors, extract_s = [], {}, {}
    audit_feats = None
    # Region-aware: the picture's features, then the four regions' pooled from one pass
    # (what `train --head-input image+regions` fits), so the report's rows say "+regions".
    regions = args.head_input != "image"
    if regions and (p6 or args.tta):
        raise ValueError(f"--head-input {args.head_input} takes no P6 or --tta")
    for h in heads:
        check_head_input(h, args.head_input)
    for bb in backbones:
        t = time.perf_counter()
        members = bb.split("+")
        if len(members) > 1 and (perturbations or args.train_augment or p6):
            raise ValueError("concatenated backbones (a+b) take no --perturb, --train-augment, P6")
        extractors = [
            FeatureExtractor(
                _reencoded(backbone, args.reencode),
                cache,
                tta=args.tta,
                progress=not args.quiet,
                face_stage=face_stage_for(m, args.face_stage),
                view=head_view(backbone, args.head_input),
            )
            for m, backbone in ((m, load_backbone(m)) for m in members)
        ]
        label = f"{bb}+{args.head_input.removeprefix('image+')}" if regions else bb
        parts = [extract_all(used, e) for e in extractors]
        ex = extractors[0]
        feats = {
            h: np.concatenate([f[h] for f, _ in parts])
            for h in parts[0][0]
            if all(h in f for f, _ in parts)
        }
        errs = {k: v for _, e in parts for k, v in e.items()}
        if audit_feats is None:
            audit_feats = feats
            if args.head_input == "tokens":  # the source probe reads no patch tokens
                width = ex.backbone.dim * (1 + len(REGIONS))
                audit_feats = {h: v[:width] for h, v in feats.items()}
        extract_s[label] = round(time.perf_counter() - t, 1)
        errors.update(errs)
        perturbed = {name: extract_perturbed(p5_tests, ex, name) for name in perturbations}
        augment = None
        if args.train_augment:
            augment = (args.train_augment, extract_perturbed(p5_train, ex, args.train_augment))
        if p6 and bb == backbones[0]:
            loc = evaluate_localisation(
                ds,
                ex,
                feats,
                head=heads[0],
                rule=_rule(args),
                seed=args.seed,
                progress=not args.quiet,
            )
            localisation.append(loc)
            if not args.quiet:
                hit = loc.metrics["top_region"]["top_hit"]  # type: ignore[index]
                print(
                    f"P6 {bb}: top region replaced {hit:.3f}, mean per-region ROC-AUC "
                    f"{loc.metrics['mean_auc_all']:.3f}",
                    file=sys.stderr,
                )
        for proto in protocols:
            results += evaluate_protocol(
                proto,
                feats,
                backbone=label,
                heads=heads,
                tta=args.tta,
                rule=_rule(args),
                n_boot=args.n_boot,
                seed=args.seed,
                cv_folds=args.cv if proto.name in cv_on else 0,
                perturbed=perturbed if proto.name in p5_on else None,
                train_augment=augment,
                augment_validation=args.augment_validation,
                head_params=input_params(ex.backbone, args.head_input),
            )
            if not args.quiet:
                print(
                    f"{proto.name} {label}: "
                    + "; ".join(
                        f"{r.head} ROC-AUC {r.tests[proto.headline].at_val['roc_auc']:.3f}"
                        for r in results[-len(heads) :]
                    ),
                    file=sys.stderr,
                )
    info = {
        "run": run,
        "facecheck": __version__,
        "commit": git_commit(),
        "data": str(args.data),
        "data fingerprint": ds.fingerprint()[:16],
        "images": len(ds),
        "exact duplicate groups": len(ds.duplicates),
        "seed": args.seed,
        "threshold_rule": _rule(args),
        "n_boot": args.n_boot,
        "tta": args.tta,
        "face_stage": args.face_stage,
        "P5 perturbations": ", ".join(perturbations) or "none",
        "training augmentation": (args.train_augment or "none")
        + (" (validation too, in the threshold)" if args.augment_validation else ""),
        "re-encoded at load": f"JPEG q{args.reencode}" if args.reencode else "no",
        "machine": machine_description(),
        "backbone precision on this CPU": resolve_precision(),
        "feature extraction seconds (cache lookups included)": extract_s,
        "wall seconds": round(time.perf_counter() - t0, 1),
    }
    if errors:
        codes: dict[str, int] = {}
        for message in errors.values():
            code = message.split(":", 1)[0]
            codes[code] = codes.get(code, 0) + 1
        info["images left out"] = ", ".join(f"{n} {c}" for c, n in sorted(codes.items()))
    from facecheck.evaluation.audit import run_audit

    audit = run_audit(protocols, audit_feats or {}, seed=args.seed)
    path = write_report(
        out,
        protocols,
        results,
        info,
        scores_csv=args.scores_csv,
        localisation=localisation,
        audit=audit,
    )
    print(f"report: {path}")
    return 0


def _evaluate_bundle(args) -> int:
    """``evaluate --model``: a saved detector, as it ships, on the protocols' test sets."""
    from facecheck import __version__
    from facecheck.backbones.cpu import resolve_precision
    from facecheck.detector.bundle import default_bundle_path
    from facecheck.detector.pipeline import Detector
    from facecheck.evaluation.data import load_dataset
    from facecheck.evaluation.evaluate import evaluate_bundle, extract_all, extract_perturbed
    from facecheck.evaluation.protocols import build, expand
    from facecheck.evaluation.report import git_commit, machine_description, write_report

    t0 = time.perf_counter()
    origin = default_bundle_path() if str(args.model) == "default" else args.model
    det = Detector.load(origin, cache=_cache(args), progress=not args.quiet)
    training = det.metadata.get("training") or {}
    if "protocol" not in training:
        raise ValueError(f"{origin}: the bundle does not say what it was trained on")
    ds = _with_synthetic(load_dataset(args.data), args)
    split = build(str(training["protocol"]), ds, int(training["seed"])).split
    # The data's own images (synthetic fakes, made from training reals only, are checked
    # apart when given: without them the bundle is still tested on everything else).
    own, made = split.train.fingerprints()
    if own != training.get("data_fingerprint"):
        raise ValueError(
            f"{args.data}: its {training['protocol']} training split (seed {training['seed']}) "
            "is not the one the detector was trained on; its test split could hold training "
            "images"
        )
    recorded = (training.get("synthetic") or {}).get("fingerprint")
    if made and recorded and made != recorded:
        raise ValueError(f"{args.synthetic}: not the synthetic set the detector was trained with")
    names = [n for n in expand(_names(args.protocols, upper=True)) if n != "P6"]
    protocols = _built(names, ds, args)
    ex = det.extractor
    feats, errors = extract_all(_records_of(ds, protocols, ("test",)), ex)
    perturbations, p5_on, p5_tests = _processing(args, ds, protocols)
    perturbed = {name: extract_perturbed(p5_tests, ex, name) for name in perturbations}
    results = [
        evaluate_bundle(
            det,
            proto,
            feats,
            # Validation chose the threshold: its images are no test either.
            trained_on=ds.subset([*split.train, *split.val]),
            n_boot=args.n_boot,
            seed=args.seed,
            perturbed=perturbed if proto.name in p5_on else None,
        )
        for proto in protocols
    ]
    run = args.run_name or time.strftime("%Y%m%d-%H%M%S")
    info = {
        "run": run,
        "facecheck": __version__,
        "commit": git_commit(),
        "detector": f"{det.version} ({origin})",
        "trained on": f"{training['protocol']} seed {training['seed']}, fingerprint "
        f"{str(training['data_fingerprint'])[:16]} (checked; no test image is in its train "
        "or validation split)",
        "data": str(args.data),
        "seed": args.seed,
        "threshold_rule": det.threshold_rule,
        "n_boot": args.n_boot,
        "processing chains": ", ".join(perturbations) or "none",
        "machine": machine_description(),
        "backbone precision on this CPU": resolve_precision(),
        "wall seconds": round(time.perf_counter() - t0, 1),
    }
    if errors:
        info["images left out"] = f"{len(errors)} (unreadable, or refused by the face stage)"
    path = write_report(
        args.out or Path("reports") / run, protocols, results, info, scores_csv=args.scores_csv
    )
    print(f"report: {path}")
    return 0


def _built(names: list[str], ds, args) -> list:
    """The protocols, leaving out (and saying so) those with nothing to measure here."""
    from facecheck.evaluation.protocols import NotApplicable, build

    protocols = []
    for name in names:
        try:
            protocols.append(build(name, ds, args.seed))
        except NotApplicable as exc:
            print(f"skipped: {exc}", file=sys.stderr)
    if names and not protocols:
        raise ValueError("no protocol applies to this data")
    return protocols


def _processing(args, ds, protocols):
    """What ``--perturb``, ``--perturb-protocols`` and ``--perturb-sample`` ask for: the
    chains ("p8" standing for all of P8's), the protocols that get them, and the test
    records to process."""
    from facecheck.evaluation.protocols import expand
    from facecheck.image.perturb import P8_CHAINS

    chains = [c for n in _names(args.perturb) for c in (P8_CHAINS if n.lower() == "p8" else [n])]
    on = expand(_names(args.perturb_protocols, upper=True))
    tests = _records_of(ds, protocols, ("test",), only=on)
    return chains, on, _sampled(tests, args.perturb_sample, args.seed)
