"""`facecheck export`: a bundle's scoring graph as one ONNX file."""

from __future__ import annotations

import sys


def cmd_export(args) -> int:
    from facecheck.detector.bundle import BundleError
    from facecheck.detector.export import ExportError, export

    try:
        path = export(args.model, args.out, cache_dir=args.cache_dir)
    except (BundleError, ExportError) as exc:
        print(f"facecheck export: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    return 0
