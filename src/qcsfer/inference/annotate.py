"""Draw results on images: box, label with confidence, a confidence bar and landmarks, with PIL."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .results import Prediction

BOX_COLOR = (255, 200, 0)
TEXT_COLOR = (0, 0, 0)
BAR_BACK = (60, 60, 60)
BAR_FILL = (80, 220, 80)
LANDMARK_COLOR = (0, 255, 255)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def annotate(
    rgb: np.ndarray, predictions: Sequence[Prediction], texts: Sequence[str] | None = None
) -> np.ndarray:
    """A copy of the RGB image with each face's box, `label 87%` (or its entry in `texts`), a
    confidence bar and its landmarks (MTCNN) as dots."""
    image = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    draw = ImageDraw.Draw(image)
    scale = max(image.width, image.height)
    line = max(1, round(scale / 400))
    for i, p in enumerate(predictions):
        x0, y0, x1, y1 = p.box
        font = _font(max(11, round(max(scale / 45, (x1 - x0) / 8))))
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=BOX_COLOR, width=line)
        radius = max(1, round((x1 - x0) / 60))
        for x, y in p.landmarks or ():
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=LANDMARK_COLOR)
        text = texts[i] if texts is not None else f"{p.label} {p.confidence:.0%}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left, bottom - top
        pad = max(2, line)
        bar_h = max(3, text_h // 3)
        label_h = text_h + 2 * pad + bar_h
        # Above the box when there is room, else inside its top edge.
        ty = y0 - label_h if y0 - label_h >= 0 else y0
        width = max(text_w + 2 * pad, x1 - x0)
        draw.rectangle((x0, ty, x0 + width, ty + text_h + 2 * pad), fill=BOX_COLOR)
        draw.text((x0 + pad - left, ty + pad - top), text, fill=TEXT_COLOR, font=font)
        bar_y = ty + text_h + 2 * pad
        draw.rectangle((x0, bar_y, x0 + width, bar_y + bar_h), fill=BAR_BACK)
        filled = x0 + round(width * min(max(p.confidence, 0.0), 1.0))
        if filled > x0:
            draw.rectangle((x0, bar_y, filled, bar_y + bar_h), fill=BAR_FILL)
    return np.asarray(image)
