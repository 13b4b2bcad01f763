"""Picture geometry shared by the face stage and the region boxes."""

from __future__ import annotations

from PIL import Image

# What a crop shows where it leaves the picture (and what an aligned face is padded with).
GREY = (128, 128, 128)


def crop_padded(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """``image.crop(box)``, with grey (not black) where the box leaves the picture."""
    x0, y0, x1, y1 = box
    w, h = image.size
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return image.crop(box)
    window = Image.new("RGB", (x1 - x0, y1 - y0), GREY)
    inner = (max(x0, 0), max(y0, 0), min(x1, w), min(y1, h))
    if inner[2] > inner[0] and inner[3] > inner[1]:
        window.paste(image.crop(inner).convert("RGB"), (inner[0] - x0, inner[1] - y0))
    return window
