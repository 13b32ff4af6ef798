"""Training images and prompts: find, decode, resize/crop, flip, templates, and a resumable order.

Only the files directly in the data folder are used (as in 2.3): sub-folders are named in a log line,
not read, so a folder of "rejects" or "originals" next to the chosen pictures never sneaks in.
Hidden files (`.DS_Store`, `._x.png`) and `Thumbs.db` / `desktop.ini` are ignored without a word.
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from invokeai_ti.data import buckets
from invokeai_ti.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IGNORED_NAMES = {"thumbs.db", "desktop.ini"}

OBJECT_TEMPLATES = [
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}",
    "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
    "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}",
    "a rendition of a {}", "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}",
    "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
    "a photo of a cool {}", "a photo of a small {}",
]  # fmt: skip
STYLE_TEMPLATES = [
    "a painting in the style of {}", "a rendering in the style of {}",
    "a cropped painting in the style of {}", "the painting in the style of {}",
    "a clean painting in the style of {}", "a dirty painting in the style of {}",
    "a dark painting in the style of {}", "a picture in the style of {}",
    "a cool painting in the style of {}", "a close-up painting in the style of {}",
    "a bright painting in the style of {}", "a cropped painting in the style of {}",
    "a good painting in the style of {}", "a close-up painting in the style of {}",
    "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}", "a weird painting in the style of {}",
    "a large painting in the style of {}",
]  # fmt: skip


def templates_for(learnable_property: str) -> list[str]:
    return STYLE_TEMPLATES if learnable_property == "style" else OBJECT_TEMPLATES


@dataclass
class TrainingImages:
    """Decoded images as [-1, 1] tensors, both flip states, with what was skipped and why."""

    paths: list[Path]
    # [num_images, 2 (plain, flipped), 3, H, W] float32; with buckets one [2, 3, H_i, W_i] per image
    pixels: torch.Tensor | list[torch.Tensor]
    skipped: list[tuple[Path, str]]
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) as decoded: SDXL
    masks: torch.Tensor | list[torch.Tensor] | None = (
        None  # [N, 2, 1, H, W] loss weights (masks.py)
    )
    fits: list[buckets.Fit] | None = None  # each image's bucket, with --enable_bucket

    @property
    def bucket_of(self) -> list[int] | None:
        """Each image's bucket as a number (images of one bucket share it), or None."""
        if self.fits is None:
            return None
        sizes = sorted({(f.height, f.width) for f in self.fits})
        return [sizes.index((f.height, f.width)) for f in self.fits]


def find_image_files(data_dir: Path, mask_extension: str | None = None) -> list[Path]:
    """The images directly in `data_dir`, without the --mask_extension files beside them."""
    if not data_dir.exists():
        raise DataError(
            f"--train_data_dir {data_dir} does not exist: create it and put 3-20 images of your "
            "concept in it, or point --train_data_dir at your images."
        )
    if not data_dir.is_dir():
        raise DataError(f"--train_data_dir {data_dir} is a file, not a folder of images.")
    files, subfolders, others = [], [], []
    for entry in sorted(data_dir.iterdir()):
        if entry.name.startswith(".") or entry.name.lower() in IGNORED_NAMES:
            continue
        if entry.is_dir():
            subfolders.append(entry.name)
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            files.append(entry)
        else:
            others.append(entry.name)
    if mask_extension:  # cat_mask.png is cat.png's mask, not a training image
        masks = {image.with_name(image.stem + mask_extension) for image in files}
        files = [image for image in files if image not in masks]
    if subfolders:
        log.info("Sub-folders of %s are not read: %s", data_dir, ", ".join(subfolders))
    if not files:
        found = ""
        if subfolders:
            found = f" (sub-folders are not read: {_some(subfolders)})"
        elif others:
            found = f" (it has {_some(others)})"
        raise DataError(
            f"--train_data_dir {data_dir} holds no images{found}: put 3-20 pictures of your concept "
            f"({', '.join(IMAGE_SUFFIXES)}) directly in it."
        )
    return files


def _some(names: list[str], limit: int = 3, sep: str = ", ") -> str:
    """'a, b, c and 4 more': enough names to find the culprit without flooding the line."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return sep.join(names[:limit]) + more


def decode_image(path: Path, resolution: int):
    """Open one image as RGB with EXIF orientation applied; raise ValueError saying why it is unusable."""
    from PIL import Image, ImageOps

    if path.stat().st_size == 0:
        raise ValueError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.seek(0)  # animated GIF/WebP: the first frame
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(
            f"too large (over {Image.MAX_IMAGE_PIXELS:,} pixels): scale it down"
        ) from None
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"not a readable image ({str(exc).splitlines()[0][:80]})") from exc
    image = _to_rgb(image)
    if min(image.size) < resolution:
        log.warning(
            "%s is %dx%d, smaller than --resolution %d: it is upscaled and may look soft",
            path.name, image.width, image.height, resolution,
        )  # fmt: skip
    return image


def _to_rgb(image):
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits (convert("RGB") would clip almost everything to white).
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray((array / peak * 255).round().astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # Transparent areas become white, not the black convert("RGB") gives.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def to_pixels(image, resolution: int, center_crop: bool) -> torch.Tensor:
    """Optional centred square crop, bicubic resize, then [2, 3, H, W] in [-1, 1] (plain, flipped)."""
    from PIL import Image

    if center_crop:
        image = square_crop(image)
    image = image.resize((resolution, resolution), resample=Image.Resampling.BICUBIC)
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    return torch.stack([array, array.flip(-1)])


def square_crop(image):
    """The centred square of a PIL image (--center_crop); masks are cropped by the same rule."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def to_bucket_pixels(image, fit: buckets.Fit) -> torch.Tensor:
    """[2, 3, fit.height, fit.width] in [-1, 1]: resized to cover the bucket, centre-cropped."""
    from PIL import Image

    image = buckets.apply_fit(image, fit, Image.Resampling.BICUBIC)
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    return torch.stack([array, array.flip(-1)])


def load_training_images(
    data_dir: Path,
    resolution: int,
    center_crop: bool,
    num_workers: int = 0,
    mask_extension: str | None = None,
    bucket_sizes: list[tuple[int, int]] | None = None,
) -> TrainingImages:
    """Decode every image; unreadable ones are skipped with a warning, none left is an error.
    With `bucket_sizes` each image goes to the bucket closest to its aspect."""
    files = find_image_files(data_dir, mask_extension)

    def prepare(path: Path) -> tuple[torch.Tensor, tuple[int, int], buckets.Fit | None] | str:
        try:
            image = decode_image(path, resolution)
            size = (image.height, image.width)
            if bucket_sizes is None:
                return to_pixels(image, resolution, center_crop), size, None
            fit = buckets.fit_to_bucket(*size, buckets.choose_bucket(*size, bucket_sizes))
            return to_bucket_pixels(image, fit), size, fit
        except ValueError as exc:
            return str(exc)

    if num_workers > 0:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            results = list(pool.map(prepare, files))
    else:
        results = [prepare(path) for path in files]
    used = [(p, r) for p, r in zip(files, results) if not isinstance(r, str)]
    skipped = [(p, r) for p, r in zip(files, results) if isinstance(r, str)]
    if skipped:
        log.warning(
            "Skipped %d unreadable file(s): %s",
            len(skipped),
            "; ".join(f"{p.name} ({why})" for p, why in skipped),
        )
    if not used:
        reasons = [f"{p.name}: {why}" for p, why in skipped]
        raise DataError(
            f"--train_data_dir {data_dir}: none of its {len(files)} image file(s) could be read "
            f"({_some(reasons, sep='; ')}): replace them with PNG or JPEG pictures."
        )
    pixels = [pixels for _, (pixels, _, _) in used]
    return TrainingImages(
        paths=[p for p, _ in used],
        pixels=pixels if bucket_sizes is not None else torch.stack(pixels),
        skipped=skipped,
        sizes=[size for _, (_, size, _) in used],
        fits=[fit for _, (_, _, fit) in used] if bucket_sizes is not None else None,
    )


@dataclass
class Sample:
    image_index: int
    flipped: int  # 0 or 1: which flip state's latents to use
    template_index: int
    caption_seed: int = 0  # seeds the caption's shuffle and dropout (data/captions.py)


def epoch_samples(
    num_images: int,
    repeats: int,
    num_templates: int,
    seed: int,
    epoch: int,
    bucket_of: list[int] | None = None,
    global_batch: int = 1,
) -> list[Sample | None]:
    """The shuffled samples of one epoch: a pure function of (seed, epoch), so resume needs only
    the epoch and the position in it, not a pickled sampler. With buckets (`bucket_of`: each
    image's bucket) see by_bucket."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    length = num_images * repeats
    order = torch.randperm(length, generator=generator).tolist()
    flips = torch.randint(0, 2, (length,), generator=generator).tolist()
    templates = torch.randint(0, num_templates, (length,), generator=generator).tolist()
    # Drawn last, so the order, flips and templates are those of runs before captions existed.
    seeds = torch.randint(0, 2**31, (length,), generator=generator).tolist()
    samples = [
        Sample(i % num_images, f, t, s) for i, f, t, s in zip(order, flips, templates, seeds)
    ]
    if bucket_of is None:
        return samples
    return by_bucket(samples, bucket_of, global_batch, generator)


def by_bucket(samples: list[Sample], bucket_of: list[int], global_batch: int,
              generator: torch.Generator) -> list[Sample | None]:  # fmt: skip
    """Every global batch from one bucket: each bucket's samples (in the shuffled order) cut into
    global batches, the last one padded with None (a shorter batch, not a sample twice), and the
    batches shuffled. The index arithmetic of micro_batch stays that of equal batches."""
    chunks = []
    for bucket in sorted(set(bucket_of)):
        mine = [s for s in samples if bucket_of[s.image_index] == bucket]
        for start in range(0, len(mine), global_batch):
            chunk = mine[start : start + global_batch]
            chunks.append(chunk + [None] * (global_batch - len(chunk)))
    order = torch.randperm(len(chunks), generator=generator).tolist()
    return [sample for index in order for sample in chunks[index]]


def micro_batches_per_epoch(num_images: int, repeats: int, batch_size: int, world_size: int,
                            bucket_of: list[int] | None = None) -> int:  # fmt: skip
    """Micro-batches one process runs per epoch; every process takes a slice of a global batch.
    With buckets, each bucket's samples fill their own batches."""
    global_batch = batch_size * world_size
    if bucket_of is None:
        return -(-num_images * repeats // global_batch)
    counts = [bucket_of.count(b) for b in set(bucket_of)]
    return sum(-(-count * repeats // global_batch) for count in counts)


def micro_batch(
    samples: list[Sample | None], index: int, batch_size: int, rank: int, world_size: int
) -> list[Sample]:
    """This process's part of global micro-batch `index` (the last one of an epoch, or of a
    bucket, may be short: its padding is left out)."""
    start = index * batch_size * world_size + rank * batch_size
    return [s for s in samples[start : start + batch_size] if s is not None]
