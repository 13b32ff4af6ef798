"""The judge: which colour, shape and background a 32 px picture shows, by rules on its pixels
(nearest palette colours, then the foreground mask's fill ratio, hole and taper)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from invokeai_ti.concepts.world import BACKGROUNDS, COLOURS, SIZE
from invokeai_ti.errors import UserError

# A pixel belongs to the shape when it is this far (RGB distance) from the background colour.
FOREGROUND_DISTANCE = 90.0
MIN_AREA = 40  # px: a smaller foreground is "no shape" (a 16 px triangle covers ~128)


@dataclass(frozen=True)
class Verdict:
    """None where the picture does not show a clear colour, shape or background."""

    colour: str | None
    shape: str | None
    background: str | None

    @property
    def concept(self) -> str | None:
        return f"{self.colour}-{self.shape}" if self.colour and self.shape else None


def _nearest(pixel: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> tuple[str, float]:
    names = list(palette)
    dist = np.linalg.norm(np.array([palette[n] for n in names], np.float32) - pixel, axis=1)
    return names[int(dist.argmin())], float(dist.min())


def _background(image: np.ndarray) -> tuple[str | None, np.ndarray]:
    """The border's median colour decides the background (the shape never reaches the border)."""
    border = np.concatenate([image[:2].reshape(-1, 3), image[-2:].reshape(-1, 3),
                             image[:, :2].reshape(-1, 3), image[:, -2:].reshape(-1, 3)])  # fmt: skip
    median = np.median(border, axis=0)
    name, dist = _nearest(median, BACKGROUNDS)
    return (name if dist < 60 else None), median


def _shape(mask: np.ndarray) -> str | None:
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    h, w = bottom - top + 1, right - left + 1
    if h < 8 or w < 8 or max(h, w) > 1.4 * min(h, w):
        return None
    fill = mask.sum() / (h * w)
    cy, cx = (top + bottom) / 2, (left + right) / 2
    centre = mask[int(round(cy - 1.5)) : int(round(cy + 1.5)) + 1,
                  int(round(cx - 1.5)) : int(round(cx + 1.5)) + 1]  # fmt: skip
    if centre.mean() < 0.3:  # the middle shows the background: a ring
        return "ring" if 0.35 < fill < 0.8 else None
    # Taper: a triangle's top quarter is much narrower than its bottom quarter.
    quarter = max(1, h // 4)
    top_width = mask[top : top + quarter].sum(axis=1).mean()
    bottom_width = mask[bottom - quarter + 1 : bottom + 1].sum(axis=1).mean()
    if top_width < 0.6 * bottom_width and fill < 0.72:
        return "triangle"
    if fill >= 0.9:
        return "square"
    if 0.66 <= fill < 0.9:
        return "circle"
    return None


def judge_image(image: np.ndarray) -> Verdict:
    """Judge one [32, 32, 3] uint8 picture (larger ones are resized first)."""
    if image.shape[:2] != (SIZE, SIZE):
        from PIL import Image

        image = np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.Resampling.BOX))
    pixels = image.astype(np.float32)
    background, bg_colour = _background(pixels)
    mask = np.linalg.norm(pixels - bg_colour, axis=2) > FOREGROUND_DISTANCE
    if mask.sum() < MIN_AREA:
        return Verdict(None, None, background)
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], np.float32)
    dist = np.linalg.norm(pixels[mask][:, None, :] - palette[None], axis=2)  # [n, 4]
    votes = Counter(dist.argmin(axis=1).tolist())
    best, count = votes.most_common(1)[0]
    colour = names[best] if count >= 0.7 * mask.sum() else None
    # The shape is read from the whole foreground: antialiased edges (between the colour and the
    # background) may sit nearer another palette colour, but they belong to the outline.
    return Verdict(colour, _shape(mask), background)


def load_images(folder: Path) -> list[tuple[Path, np.ndarray]]:
    from PIL import Image

    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder of images: give the folder `render` wrote.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise UserError(f"{folder} holds no .png or .jpg images to judge.")
    return [(p, np.asarray(Image.open(p).convert("RGB"))) for p in files]


def summarize(verdicts: list[Verdict]) -> dict:
    """Fractions of images per concept, colour, shape and background ('none' where unclear)."""
    n = len(verdicts)

    def share(values) -> dict[str, float]:
        counts = Counter(v or "none" for v in values)
        return {k: round(c / n, 4) for k, c in sorted(counts.items(), key=lambda kv: -kv[1])}

    return {
        "images": n,
        "concept": share(v.concept for v in verdicts),
        "background": share(v.background for v in verdicts),
        "colour": share(v.colour for v in verdicts),
        "shape": share(v.shape for v in verdicts),
    }


def judge_folder(folder: Path) -> dict:
    return summarize([judge_image(image) for _, image in load_images(folder)])


def to_json(summary: dict) -> str:
    return json.dumps(summary, indent=2)
