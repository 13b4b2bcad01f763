"""Reading a detector bundle's ``bundle.json`` (torch-free): its format, its checks, and the
digest that ties an exported scoring graph to the bundle it was exported from."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from facecheck import __version__

BUNDLE_FORMAT = "facecheck.detector"
BUNDLE_VERSION = 1


class BundleError(RuntimeError):
    """A saved detector cannot be loaded as it is (wrong format, version or weights)."""


def default_bundle_path() -> Path:
    """The detector shipped inside the package (see its MODEL_CARD.md)."""
    return Path(str(resources.files("facecheck") / "resources" / "default"))


def read_bundle(directory: str | Path | None = None) -> tuple[Path, dict]:
    """The bundle folder (default: the shipped one) and its ``bundle.json``, checked for
    format and version, with the head file's checksum verified."""
    directory = Path(directory) if directory else default_bundle_path()
    meta_file = directory / "bundle.json"
    if not meta_file.is_file():
        raise BundleError(f"{directory}: not a facecheck detector (no bundle.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_file}: unreadable ({exc})") from exc
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{directory}: format {meta.get('format')!r}, want {BUNDLE_FORMAT}")
    if int(meta.get("format_version", -1)) > BUNDLE_VERSION:
        raise BundleError(
            f"{directory}: bundle format {meta['format_version']} is newer than this "
            f"facecheck ({__version__}) reads (<= {BUNDLE_VERSION}); upgrade facecheck"
        )
    head_file = directory / meta["head"]["file"]
    if hashlib.sha256(head_file.read_bytes()).hexdigest() != meta["head"]["sha256"]:
        raise BundleError(f"{head_file}: checksum mismatch (file changed or damaged)")
    return directory, meta


def scoring_digest(directory: Path, meta: dict) -> str:
    """What an exported graph computes, as one hash: the backbone's weights, the
    preprocessing, the face stage, what the head reads, and every head file's bytes. A
    graph whose digest differs from its bundle's is stale and is not used."""
    parts = {
        "weights": meta["backbone"]["weights_id"],
        "preprocessing": meta["preprocessing"],
        "face_stage": meta.get("face_stage"),
        "head_input": meta.get("head_input", "image"),
        "head": meta["head"]["sha256"],
        "regions": {
            name: hashlib.sha256((directory / file).read_bytes()).hexdigest()
            for name, file in sorted(((meta.get("regions") or {}).get("files") or {}).items())
        },
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def model_version(meta: dict) -> str:
    """The version stamped on every verdict of this bundle."""
    return str(meta.get("model_version", f"unsaved-{__version__}"))
