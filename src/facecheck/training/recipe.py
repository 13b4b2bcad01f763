"""Detector recipes: one TOML file per recipe naming every choice `facecheck train` makes
(backbone, head, what it reads, face stage, training data and processing, threshold rule),
so that the shipped detector is rebuilt from a file rather than from Makefile variables.

A recipe is a name among the packaged ones (``facecheck/resources/recipes/<name>.toml``) or
a path. Its keys are `train`'s options (long names, dashes as underscores) plus
``needs_synthetic`` (the recipe trains on `facecheck synthesize`'s fakes, whose folder the
command line names). The bundle records the recipe it was trained from.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

# Keys a recipe may hold that are not train options.
RECIPE_ONLY = frozenset({"needs_synthetic"})


def recipe_dir() -> Path:
    return Path(str(resources.files("facecheck") / "resources" / "recipes"))


def recipe_names() -> list[str]:
    """The packaged recipes, by name."""
    return sorted(p.stem for p in recipe_dir().glob("*.toml"))


def load_recipe(name_or_path: str | Path) -> dict[str, object]:
    """A recipe's settings; ValueError naming the packaged recipes if none is found."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = recipe_dir() / f"{name_or_path}.toml"
    if not path.is_file():
        raise ValueError(
            f"no recipe {name_or_path!r}: a TOML file, or one of {', '.join(recipe_names())}"
        )
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from exc
