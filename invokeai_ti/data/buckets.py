"""Aspect-ratio buckets (--enable_bucket, kohya's names and defaults): each image trains at the
bucket whose aspect is closest to its own, about --resolution squared in area, so nothing is
squashed and little is cropped; batches are drawn from one bucket (dataset.epoch_samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Fit:
    """How one image is brought to its bucket: resized to cover it, then centre-cropped."""

    height: int  # the bucket's size
    width: int
    resized: tuple[int, int]  # (height, width) after the resize, before the crop
    crop_top: int  # in the resized image's pixels (SDXL's crop conditioning)
    crop_left: int


def bucket_sizes(resolution: int, min_reso: int, max_reso: int, step: int) -> list[tuple[int, int]]:
    """kohya's bucket list: for every width from min to max in steps, the tallest height (a
    multiple of step, within the bounds) whose area stays within resolution squared; both
    orientations, and the square. (height, width) pairs, sorted."""
    max_area = resolution * resolution
    side = int(math.sqrt(max_area) // step) * step
    sizes = {(side, side)}
    for width in range(min_reso, max_reso + 1, step):
        height = min(max_reso, int(max_area // width // step) * step)
        if height >= min_reso:
            sizes.update({(height, width), (width, height)})
    return sorted(sizes)


def choose_bucket(height: int, width: int, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (on a log scale, so 2:1 and 1:2 are
    equally far from 1:1); ties go to the larger area."""
    aspect = math.log(width / height)
    return min(sizes, key=lambda s: (abs(math.log(s[1] / s[0]) - aspect), -s[0] * s[1]))


def fit_to_bucket(height: int, width: int, bucket: tuple[int, int]) -> Fit:
    """Scale so the image covers the bucket (aspect kept), then crop the overhang equally."""
    bucket_h, bucket_w = bucket
    scale = max(bucket_h / height, bucket_w / width)
    resized = (max(bucket_h, round(height * scale)), max(bucket_w, round(width * scale)))
    top, left = (resized[0] - bucket_h) // 2, (resized[1] - bucket_w) // 2
    return Fit(bucket_h, bucket_w, resized, top, left)


def describe_buckets(fits: list[Fit]) -> str:
    """'64x80: 2 images, 80x64: 2 images' (width x height), for the dry-run plan."""
    counts: dict[tuple[int, int], int] = {}
    for fit in fits:
        counts[(fit.width, fit.height)] = counts.get((fit.width, fit.height), 0) + 1
    return ", ".join(
        f"{w}x{h}: {n} image{'s' if n > 1 else ''}" for (w, h), n in sorted(counts.items())
    )


def apply_fit(image, fit: Fit, resample):
    """A PIL image (or mask) resized and cropped as `fit` says."""
    image = image.resize((fit.resized[1], fit.resized[0]), resample=resample)
    return image.crop(
        (fit.crop_left, fit.crop_top, fit.crop_left + fit.width, fit.crop_top + fit.height)
    )
