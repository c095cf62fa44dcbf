"""Training recipes by name: the YAML files of the repository's configs/, shipped in the wheel.

`src/qcsfer/configs` is a link to the repository's `configs/`, so a source checkout and an
installed wheel see the same files under the same name, and `qcsfer train ferplus_small_cpu`
works without a clone. A path to any YAML file still works and is always tried first.
"""

from __future__ import annotations

import difflib
import textwrap
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, NotFoundError

PACKAGED = Path(__file__).resolve().parent / "configs"
SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Recipe:
    """A recipe file; `packaged` when it was found by name among the shipped ones."""

    path: Path
    packaged: bool = False

    @property
    def name(self) -> str:
        return self.path.stem

    def summary(self, width: int = 100) -> str:
        """The first sentence of the recipe's leading comment, shortened to `width`."""
        lines = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            lines.append(line.lstrip("#").strip())
        text = " ".join(lines)
        end = text.find(". ")
        first = text if end < 0 else text[: end + 1]
        return textwrap.shorten(first, width, placeholder=" ...") if first else "(no comment)"


def packaged_recipes() -> list[Recipe]:
    """The recipes shipped with qcsfer, by name."""
    if not PACKAGED.is_dir():
        return []
    return [Recipe(p, packaged=True) for p in sorted(PACKAGED.glob("*.yaml")) if p.is_file()]


def find_recipe(spec: str | Path) -> Recipe:
    """A recipe file given by path, or else a packaged recipe given by its bare name
    (`ferplus_small_cpu` or `ferplus_small_cpu.yaml`): a file the user names always wins."""
    path = Path(spec)
    if path.is_file():
        return Recipe(path)
    text = str(spec)
    if path.is_dir() or path.name != text:  # a folder, or a path with folders: not a name
        what = "is a folder, not a YAML file" if path.is_dir() else "does not exist"
        raise NotFoundError(f"config file {path} {what}")
    name = path.stem if path.suffix in SUFFIXES else text
    by_name = {recipe.name: recipe for recipe in packaged_recipes()}
    if name in by_name:
        return by_name[name]
    close = difflib.get_close_matches(name, list(by_name), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise NotFoundError(
        f"config file {path} does not exist and no packaged recipe is named {name!r}{hint}; "
        "`qcsfer recipes` lists them"
    )


def require_packaged_root(recipe: Recipe, root: object) -> None:
    """A packaged recipe's data.root points into the authors' repository layout: where it does
    not exist, stop before any work and say how to give the dataset's folder."""
    if isinstance(root, str) and not Path(root).exists():
        relative = "" if Path(root).is_absolute() else f", relative to {Path.cwd()}"
        raise ConfigError(
            f"recipe {recipe.name} reads its dataset from data.root {root!r}, which does not "
            f"exist here{relative}: pass --set data.root=PATH (the dataset's folder)"
        )
