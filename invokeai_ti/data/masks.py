"""Loss masks: each image's alpha channel (--alpha_mask) or a mask image beside it
(--mask_extension), cropped, resized and flipped exactly as the image, as weights in [0, 1].

The latent cache (latents.py) brings them to the latent grid once; train_step weights the
denoising loss with them, so the background of a masked image teaches the vectors nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from invokeai_ti.data.buckets import Fit, apply_fit
from invokeai_ti.data.dataset import square_crop
from invokeai_ti.errors import DataError


def mask_path(image: Path, extension: str) -> Path:
    """The mask beside an image, by the caption files' rule: cat.png + _mask.png -> cat_mask.png."""
    return image.with_name(image.stem + extension)


def read_mask(image_path: Path, alpha: bool, extension: str | None):
    """The mask of one image as a PIL 'L' image of the image's (EXIF-rotated) size; opaque where an
    image has no alpha channel."""
    from PIL import Image, ImageOps

    with Image.open(image_path) as opened:
        opened.seek(0)
        image = ImageOps.exif_transpose(opened)
        size = image.size
        if alpha:
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            return image.convert("RGBA").getchannel("A") if has_alpha else Image.new("L", size, 255)
    path = mask_path(image_path, extension or "")
    try:
        with Image.open(path) as opened:
            mask = opened.convert("L")
    except FileNotFoundError:
        raise DataError(f"--mask_extension {extension}: {image_path.name} has no mask {path.name}: "
                        "add it, or move the image out of the folder.") from None  # fmt: skip
    except OSError as exc:
        raise DataError(f"mask {path} is not a readable image ({exc}): save it as PNG.") from exc
    # A mask drawn at another size still covers the same picture.
    return mask if mask.size == size else mask.resize(size, resample=Image.Resampling.BILINEAR)


def to_mask_tensor(
    mask, resolution: int, center_crop: bool, fit: Fit | None = None
) -> torch.Tensor:
    """[2, 1, H, W] in [0, 1] (plain, flipped): the geometry of dataset.to_pixels, or of
    dataset.to_bucket_pixels with a bucket's `fit`."""
    from PIL import Image

    if fit is not None:
        mask = apply_fit(mask, fit, Image.Resampling.BILINEAR)
    else:
        if center_crop:
            mask = square_crop(mask)
        mask = mask.resize((resolution, resolution), resample=Image.Resampling.BILINEAR)
    array = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None]
    return torch.stack([array, array.flip(-1)])


def load_masks(images: list[Path], resolution: int, center_crop: bool, alpha: bool,
               extension: str | None, fits: list[Fit] | None = None) -> torch.Tensor | list[torch.Tensor]:  # fmt: skip
    """[num_images, 2, 1, H, W] weights (with buckets one [2, 1, H_i, W_i] per image); a mask
    that leaves nothing to learn is refused."""
    tensors = []
    for index, image in enumerate(images):
        source = f"{image} (its alpha channel)" if alpha else str(mask_path(image, extension or ""))
        fit = fits[index] if fits is not None else None
        mask = to_mask_tensor(read_mask(image, alpha, extension), resolution, center_crop, fit)
        if not bool(mask.any()):
            cropped = " after --center_crop" if center_crop else ""
            raise DataError(f"the mask of {source} is all zero{cropped}: nothing of that image "
                            "would be learned; paint the subject white or remove the image.")  # fmt: skip
        tensors.append(mask)
    return tensors if fits is not None else torch.stack(tensors)


def mask_digests(images: list[Path], masks: torch.Tensor | list[torch.Tensor]) -> dict[str, str]:
    """Each image's mask as a short hash, so a resume can name the images whose mask changed."""
    return {
        image.name: hashlib.sha256(mask.numpy().tobytes()).hexdigest()[:12]
        for image, mask in zip(images, masks)
    }


def to_latent_grid(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, 2, 1, H, W] pixel masks as [N, 2, 1, h, w] weights on the latent grid: each latent cell
    weighs the mean of the pixels it encodes (area averaging)."""
    flat = torch.nn.functional.interpolate(masks.flatten(0, 1), size=size, mode="area")
    return flat.reshape(*masks.shape[:3], *size)
