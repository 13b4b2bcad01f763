"""`facecheck check`, `explain` and `calibrate`: score images with a bundle."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from facecheck.cli.common import _detector_and_files, _expand, _load_detector, load_scorer

# Exit statuses of `check` (and `score`): what a script needs to branch on.
ALL_REAL, SOME_FLAGGED, USAGE_ERROR, SOME_INVALID = 0, 1, 2, 3


def _chunks(items: list, first: int = 1, most: int = 8):
    """Growing chunks (1, 2, 4, ... ``most``): the first answer is printed at once, the
    rest still batched."""
    i, n = 0, first
    while i < len(items):
        yield items[i : i + n]
        i, n = i + n, min(2 * n, most)


def cmd_check(args) -> int:
    from tqdm import tqdm

    det, files = _detector_and_files(args)
    if det is None or not files:
        return USAGE_ERROR
    if args.threshold is not None:
        det.threshold = args.threshold
    width = max(len(str(f)) for f in files)
    if not args.json:
        print(f"{'image':<{width}}  {'P(fake)':>7}  verdict", flush=True)
    flagged = invalid = 0
    # The bar goes to stderr, and only on a terminal: the lines on stdout stay clean.
    bar = tqdm(total=len(files), unit="img", disable=None if len(files) > 1 else True,
               file=sys.stderr, leave=False)  # fmt: skip
    for chunk in _chunks(files):
        for v in det.check(chunk, regions=args.regions):
            flagged += v.verdict == "fake"
            invalid += bool(v.error)
            bar.clear()
            print(json.dumps(v.to_dict()) if args.json else _line(v, width), flush=True)
            bar.update(1)
    bar.close()
    if not args.json:
        print(f"model {det.version}, threshold {det.threshold:.4g}", file=sys.stderr)
    if invalid:
        return SOME_INVALID
    return SOME_FLAGGED if flagged else ALL_REAL


def cmd_score(args) -> int:
    from tqdm import tqdm

    from facecheck.detector.batch import score

    if args.chunk < 1:
        raise ValueError("--chunk must be at least 1")
    files = files_from(args.sources)
    if not files:
        print("facecheck: no images found", file=sys.stderr)
        return USAGE_ERROR
    det = _load_detector(args)
    if det is None:
        return USAGE_ERROR
    with tqdm(total=len(files), unit="img", disable=args.quiet or None, file=sys.stderr) as bar:
        done = score(det, files, args.out, chunk=args.chunk, regions=args.regions,
                     progress=bar.update, engine=args.engine, model=args.model,
                     workers=args.workers, address=args.ray_address,
                     load=functools.partial(load_scorer, runtime=args.runtime,
                                            cache_dir=args.cache_dir, batch=True))  # fmt: skip
    print(
        f"wrote {done.out}: {done.rows} rows ({done.scored_now} scored now, "
        f"{done.parts_reused} parts from an earlier run), {done.flagged} flagged, "
        f"{done.invalid} not judged; model {det.version}"
    )
    return 0


def files_from(sources: list[Path]) -> list[Path]:
    """The paths a manifest names (JSON lines with ``path``, relative to the manifest), the
    lines of a ``.txt`` list, and what `check` takes (folders' images, single files)."""
    out: list[Path] = []
    for src in sources:
        if src.suffix == ".jsonl" and not src.is_dir():
            for line in src.read_text().splitlines():
                if line.strip():
                    out.append(src.parent / json.loads(line)["path"])
        elif src.suffix == ".txt" and not src.is_dir():
            out += [Path(x.strip()) for x in src.read_text().splitlines() if x.strip()]
        else:
            out += _expand([src])
    return out


def _line(v, width: int) -> str:
    if v.error:
        return f"{v.input:<{width}}  {'-':>7}  {v.verdict}: {v.error}"
    # Four decimals: calibrated to a 1:1000 prior, probabilities are small.
    where = ""
    if v.regions:
        top = max(v.regions, key=v.regions.get)  # type: ignore[arg-type]
        where = f" (most likely edited: {top} {v.regions[top]:.2f})"
    return f"{v.input:<{width}}  {v.fake_probability:7.4f}  {v.verdict}{where}"


def cmd_calibrate(args) -> int:
    import shutil

    from facecheck.detector.bundle import default_bundle_path
    from facecheck.evaluation.model_card import write_model_card

    det, files = _detector_and_files(args)
    if det is None or not files:
        return 2
    # Scoring a deployment's sample takes minutes: bars with rate and ETA (faces, then
    # features) on a terminal's stderr.
    det.extractor.progress = sys.stderr.isatty()
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
