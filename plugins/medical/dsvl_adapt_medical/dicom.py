"""Read a folder of DICOM images with a labels file, as rows for dsvl-adapt.

Layout (one folder per split)::

    DIR/train/labels.jsonl      one JSON object per line (see below)
    DIR/train/0001.dcm          the DICOM files the labels name (sub-folders allowed)
    DIR/validation/...
    DIR/test/...

A ``labels.jsonl`` line::

    {"file": "0001.dcm", "answer": "Findings: small nodule in the left lung. ...",
     "question": "Write the radiology report for this image.",   # optional
     "id": "study-17",                                           # optional
     "frame": 0,                                                  # optional, multi-frame files
     "meta": {"view": "PA"}}                                      # optional

Pixels become an 8-bit image the way a DICOM viewer shows them (PS3.3 C.11):

1. Modality LUT: ``value = stored * RescaleSlope + RescaleIntercept`` (defaults 1 and 0).
2. VOI LUT: the first Window Center / Window Width pair of the header, with the
   ``VOILUTFunction`` it names (LINEAR, the default; LINEAR_EXACT; SIGMOID), mapped to 0..255.
   Without a window: the header's VOI LUT Sequence if there is one, else the image's own
   min..max range.
3. ``MONOCHROME1`` (high values are dark) is inverted, so bone is white in every image.

Colour images (RGB, YBR_*, PALETTE COLOR) are converted to RGB without windowing. A file that is not DICOM,
is truncated, or has no readable pixel data is reported by name; the core's ``data.on_bad_row``
decides whether that stops the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterator

import numpy as np

LABELS = "labels.jsonl"


# --------------------------------------------------------------------------- windowing
def _first(value: Any) -> float | None:
    """A DICOM DS/IS value that may be multi-valued (several windows): its first entry, as float."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def modality_lut(stored: np.ndarray, slope: float | None, intercept: float | None) -> np.ndarray:
    """Stored values to modality units (e.g. Hounsfield units for CT)."""
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    return stored.astype(np.float64) * slope + intercept


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """VOI LUT of PS3.3 C.11.2.1.2 onto 0..255 (float, not yet rounded)."""
    y_min, y_max = 0.0, 255.0
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return (y_max - y_min) / (1.0 + np.exp(-4.0 * (values - center) / width)) + y_min
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"Window Width must be > 0 for LINEAR_EXACT, got {width}")
        return np.clip((values - center) / width + 0.5, 0.0, 1.0) * (y_max - y_min) + y_min
    # LINEAR (C.11.2.1.2.1): width must be >= 1
    if width < 1:
        raise ValueError(f"Window Width must be >= 1 for LINEAR, got {width}")
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    if width == 1:
        return np.where(values <= low, y_min, y_max)
    out = ((values - (center - 0.5)) / (width - 1) + 0.5) * (y_max - y_min) + y_min
    return np.where(values <= low, y_min, np.where(values > high, y_max, out))


def _min_max(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(values)
    return (values - lo) / (hi - lo) * 255.0


def to_8bit(ds: Any, frame: int | None = None) -> "Image.Image":  # noqa: F821
    """The viewer's rendering of a pydicom dataset as an RGB PIL image."""
    from PIL import Image

    pixels = ds.pixel_array
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        index = frames // 2 if frame is None else frame
        if not 0 <= index < frames:
            raise ValueError(f"frame {index} does not exist (the file has {frames} frames)")
        pixels = pixels[index]
    if samples == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        return Image.fromarray(np.ascontiguousarray(pixels).astype(np.uint8), mode="RGB")
    if samples != 1 or pixels.ndim != 2:
        raise ValueError(f"unsupported pixel layout: {samples} samples per pixel, array shape {pixels.shape}")
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = np.asarray(apply_color_lut(pixels, ds))
        if rgb.dtype != np.uint8:  # 16-bit palette entries
            rgb = (rgb.astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    values = modality_lut(pixels, _first(getattr(ds, "RescaleSlope", None)),
                          _first(getattr(ds, "RescaleIntercept", None)))
    center = _first(getattr(ds, "WindowCenter", None))
    width = _first(getattr(ds, "WindowWidth", None))
    if center is not None and width is not None and width > 0:
        function = str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR")
        shown = window(values, center, width, function)
    elif "VOILUTSequence" in ds:
        from pydicom.pixels import apply_voi_lut

        lut = np.asarray(apply_voi_lut(np.round(values).astype(np.int64), ds), dtype=np.float64)
        shown = _min_max(lut)
    else:
        shown = _min_max(values)
    if photometric == "MONOCHROME1":
        shown = 255.0 - shown
    gray = np.clip(np.round(shown), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def read_dicom(path: str | Path, frame: int | None = None) -> "Image.Image":  # noqa: F821
    """Read one DICOM file to an RGB image; raises :class:`DataError` naming the file."""
    from dsvl_adapt.errors import DataError

    path = Path(path)
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:  # pragma: no cover - pydicom is a dependency of this plugin
        raise DataError("reading DICOM needs pydicom: pip install pydicom") from None
    if not path.is_file():
        raise DataError(f"{path}: DICOM file not found")
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise DataError(f"{path}: not a DICOM file ({exc}); check the file or remove its label") from None
    except Exception as exc:
        raise DataError(f"{path}: corrupt DICOM file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no pixel data (truncated, or not an image object such as a "
                        "structured report)")
    try:
        return to_8bit(ds, frame)
    except Exception as exc:
        raise DataError(f"{path}: cannot decode the DICOM pixel data ({type(exc).__name__}: {exc}); "
                        "the file may be truncated or use a compression pydicom cannot decode here") from None


# --------------------------------------------------------------------------- rows
def read_dicom_split(directory: str | Path, split: str, *, default_question: str) -> Iterator[dict[str, Any]]:
    """Yield raw rows of ``<directory>/<split>/labels.jsonl`` with images read from DICOM.

    Each row carries ``_source`` (``labels.jsonl:line``); an unreadable label line or DICOM
    file becomes an ``_error`` row naming it, so ``data.on_bad_row`` applies.
    """
    from dsvl_adapt.data.jsonl import iter_json_objects
    from dsvl_adapt.data.rows import resolve_inside
    from dsvl_adapt.errors import DataError

    folder = Path(directory) / split
    labels = folder / LABELS
    if not labels.is_file():
        raise DataError(f"{labels} not found: a DICOM dataset needs <split>/{LABELS} beside the .dcm files "
                        "(see the medical plugin's README)")
    for source, entry, error in iter_json_objects(labels):
        if entry is None:
            yield {"_source": source, "_error": error}
            continue
        unknown = set(entry) - {"file", "question", "answer", "id", "meta", "frame"}
        if unknown:
            yield {"_source": source, "_error": f"unknown field(s) {sorted(unknown)} in {LABELS}; "
                                                "use file, answer, question, id, frame, meta"}
            continue
        name = entry.get("file")
        if not isinstance(name, str) or not name:
            yield {"_source": source, "_error": "'file' (the .dcm path relative to the split folder) is missing"}
            continue
        frame = entry.get("frame")
        if frame is not None and not isinstance(frame, int):
            yield {"_source": source, "_error": f"'frame' must be an integer, got {frame!r}"}
            continue
        try:
            path = resolve_inside(folder, name, source)
            image = read_dicom(path, frame)
        except DataError as exc:
            yield {"_source": source, "_error": str(exc)}
            continue
        meta = entry.get("meta") if entry.get("meta") is not None else {}
        if isinstance(meta, dict):
            meta = {**meta, "file": name}
        yield {"_source": source, "id": entry.get("id") or f"{split}/{name}", "image": image,
               "question": entry.get("question") or default_question, "answer": entry.get("answer"),
               "meta": meta}
