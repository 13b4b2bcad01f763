"""`facecheck synthesize`: synthetic fakes from the data's real photos, split as P8 splits."""

from __future__ import annotations

import sys

from facecheck.cli.common import _names


def cmd_synthesize(args) -> int:
    from facecheck.evaluation.data import SPLITS, load_dataset
    from facecheck.evaluation.groups import groups_of
    from facecheck.evaluation.protocols import P8_CAMERAS, build
    from facecheck.features.cache import default_cache_dir
    from facecheck.training.synthesize import Parent, synthesize

    out = args.out or default_cache_dir() / f"synthetic-seed{args.seed}"
    split = build("P8-SEEN", load_dataset(args.data), args.seed).split
    parents = [
        Parent(r.path, r.sha256, r.source, name, tuple(sorted((groups_of(r) or {}).items())))
        for name in SPLITS
        for r in split[name]
        if r.label == "real" and r.source in P8_CAMERAS and not r.parents
    ]
    rows = synthesize(
        parents,
        out,
        n_train=args.n_train,
        kinds=_names(args.kinds),
        seed=args.seed,
        progress=not args.quiet,
        log=None if args.quiet else lambda m: print(m, file=sys.stderr),
    )
    print(f"{len(rows)} synthetic fakes: {out / 'manifest.jsonl'}")
    return 0
