"""`facecheck check`, `explain` and `calibrate`: score images with a bundle."""

from __future__ import annotations

import json
import sys

from facecheck.cli.common import _detector_and_files


def cmd_check(args) -> int:
    det, files = _detector_and_files(args)
    if det is None or not files:
        return 2
    if args.threshold is not None:
        det.threshold = args.threshold
    verdicts = det.check(files, regions=args.regions)
    if args.json:
        for v in verdicts:
            print(json.dumps(v.to_dict()))
    else:
        width = max(len(v.input) for v in verdicts)
        print(f"{'image':<{width}}  {'P(fake)':>7}  verdict")
        for v in verdicts:
            if v.error:
                print(f"{v.input:<{width}}  {'-':>7}  {v.verdict}: {v.error}")
            else:
                # Four decimals: calibrated to a 1:1000 prior, probabilities are small.
                where = ""
                if v.regions:
                    top = max(v.regions, key=v.regions.get)  # type: ignore[arg-type]
                    where = f" (most likely edited: {top} {v.regions[top]:.2f})"
                print(f"{v.input:<{width}}  {v.fake_probability:7.4f}  {v.verdict}{where}")
        print(f"model {det.version}, threshold {det.threshold:.4g}", file=sys.stderr)
    return 1 if any(v.error for v in verdicts) else 0


def cmd_calibrate(args) -> int:
    import shutil

    from facecheck.detector.pipeline import default_bundle_path
    from facecheck.evaluation.model_card import write_model_card

    det, files = _detector_and_files(args)
    if det is None or not files:
        return 2
    if len(files) < 100:
        print(
            f"facecheck: {len(files)} photos: with fewer than about 100 the rate "
            f"{args.max_fpr:g} is only roughly kept",
            file=sys.stderr,
        )
    try:
        record = det.calibrate_threshold(files, args.max_fpr)
    except ValueError as exc:
        print(f"facecheck: {exc}", file=sys.stderr)
        return 2
    origin = args.model or default_bundle_path()
    if args.out.resolve() != origin.resolve():
        shutil.copytree(origin, args.out, dirs_exist_ok=True)  # region heads, card, etc.
    extra = {}
    if args.groups is not None:
        from facecheck.evaluation.data import load_manifest, with_hashes
        from facecheck.evaluation.groups import held_out_table, rows_from, section

        table = held_out_table(det, with_hashes(load_manifest(args.groups)))
        if table is None:
            print(f"facecheck: {args.groups}: no photo carries group labels", file=sys.stderr)
            return 2
        extra["deployment_equal_treatment"] = table
        print("\n".join(section(rows_from(table), f"{args.groups} at the new threshold")))
    det.save(args.out, **extra)
    write_model_card(args.out, det)
    print(
        f"saved {args.out} ({det.version}): threshold {det.threshold:.4f} flags "
        f"{record['flagged_share']:.1%} of {record['n_photos']} photos (was "
        f"{record['previous_threshold']:.4f}, {record['previous_rule']}); "
        f"{record['n_left_out']} left out (unreadable, no face or several)"
    )
    return 0


def cmd_explain(args) -> int:
    from facecheck.detector.explain import explain_to
    from facecheck.image.decode import ImageError

    det, files = _detector_and_files(args)
    if det is None or not files:
        return 2
    failed = 0
    for f in files:
        try:
            exp, png = explain_to(det, f, args.out, f.stem)
        except ImageError as exc:
            print(f"{f}: {exc.code}: {exc}", file=sys.stderr)
            failed += 1
            continue
        (args.out / f"{f.stem}.explain.json").write_text(json.dumps(exp.to_dict(), indent=2))
        v = exp.verdict
        if v.error:
            failed += 1
            print(f"{f}: {v.verdict}: {v.error} -> {png}")
        else:
            regions = ", ".join(f"{k} {p:.2f}" for k, p in (exp.regions or {}).items())
            print(
                f"{f}: {v.verdict} {v.fake_probability:.4f}; top region {exp.top_region}"
                + (f" ({regions})" if regions else "")
                + f" -> {png}"
            )
    return 1 if failed else 0
