"""Open images defensively: every failure names the file and says what to do."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError


def open_image(image: Any, *, source: str, max_pixels: int = 50_000_000) -> Image.Image:
    """Return an RGB ``PIL.Image`` from a path or an image, converting modes explicitly.

    Refused, with the source named: missing, zero-byte, truncated or unreadable files, and
    images larger than ``max_pixels`` (decompression bombs).
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise DataError(f"{source}: image file {path} does not exist; fix the path (relative to the JSONL file)")
        if path.stat().st_size == 0:
            raise DataError(f"{source}: image file {path} is empty (0 bytes); re-export or remove this row")
        img = _decode(path, source, max_pixels)
    elif isinstance(image, Image.Image):
        img = image
        _check_size(img, source, max_pixels)
    else:
        raise DataError(f"{source}: 'image' must be a file path or a PIL image, got {type(image).__name__}")
    return to_rgb(img, source)


def _check_size(img: Image.Image, source: str, max_pixels: int) -> None:
    pixels = img.width * img.height
    if pixels > max_pixels:
        raise DataError(
            f"{source}: image is {img.width}x{img.height} = {pixels:,} pixels, above the limit of {max_pixels:,} "
            "(a possible decompression bomb); downscale it or raise data.max_image_pixels"
        )


def _decode(path: Path, source: str, max_pixels: int) -> Image.Image:
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_size(img, source, max_pixels)
                img.load()
                return img.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(
            f"{source}: image file {path} is too large to decode safely ({exc}); downscale it or raise "
            "data.max_image_pixels"
        ) from None
    except UnidentifiedImageError:
        raise DataError(
            f"{source}: {path} is not a readable image (corrupt, or not an image format Pillow knows); "
            "re-export it as PNG or JPEG"
        ) from None
    except OSError as exc:
        raise DataError(f"{source}: image file {path} is damaged ({exc}); re-export it or remove this row") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def to_rgb(img: Image.Image, source: str) -> Image.Image:
    """Convert any mode Pillow decodes to 8-bit RGB, explicitly per mode."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("L", "CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    if mode in ("P", "PA", "RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "1":
        return img.convert("L").convert("RGB")
    if mode.startswith("I") or mode == "F":
        # 16/32-bit integer or float grayscale: rescale the actual range to 0..255.
        array = np.asarray(img, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        scaled = np.zeros_like(array) if hi <= lo else (array - lo) / (hi - lo) * 255.0
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    raise DataError(f"{source}: image mode {mode!r} is not supported; convert the image to RGB")
