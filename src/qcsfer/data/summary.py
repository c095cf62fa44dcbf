"""What `qcsfer data` prints: images per class, dropped rows, image sizes, unreadable files."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..imaging import ImageError, open_image
from .records import LabeledImages


@dataclass
class SplitSummary:
    data: LabeledImages
    checked: int  # images whose header was read (a random sample on large splits)
    sizes: Counter  # (width, height) -> count among the checked images
    unreadable: list[str]  # reasons, for the checked images that cannot be used

    def table(self) -> str:
        d = self.data
        lines = [f"{d.name} / {d.split}: {len(d)} images, {d.num_classes} classes"]
        lines += [f"  {n:<12}{c:>8}" for n, c in zip(d.classes, d.class_counts(), strict=True)]
        lines += [f"  ({count} rows {reason})" for reason, count in d.notes.items()]
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in self.sizes.most_common(3))
        lines.append(f"  image sizes among {self.checked} checked: {sizes or '-'}")
        if self.unreadable:
            lines.append(f"  {len(self.unreadable)} of them unusable, e.g. {self.unreadable[0]}")
        return "\n".join(lines)


def summarize(data: LabeledImages, sample: int = 500, seed: int = 0) -> SplitSummary:
    """Counts from the labels; sizes and readability from (a sample of) the image files."""
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(data))[:sample]
    sizes: Counter = Counter()
    unreadable = []
    for i in chosen:
        try:
            with Image.open(data.paths[i]) as image:
                sizes[image.size] += 1
            open_image(data.paths[i])  # full decode: catches truncated files too
        except (ImageError, OSError) as exc:
            unreadable.append(str(exc))
    return SplitSummary(data, len(chosen), sizes, unreadable)
