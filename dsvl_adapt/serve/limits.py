"""What a request may hold, and the errors a client gets when it holds more (or something else).

Every refusal is a :class:`ServeError`: an HTTP status in the 4xx range, a message that names the field at fault and
the fix, and the OpenAI error fields (``type``, ``param``, ``code``) so the official client raises its usual
``BadRequestError`` / ``AuthenticationError`` / ``RateLimitError``. Images are decoded here, defensively: only
``data:`` URLs (local paths only when the server allows them), bytes and pixels bounded before and while decoding.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..data.images import to_rgb
from ..errors import DataError


@dataclass(frozen=True)
class Limits:
    """Bounds on one request; each is enforced with a 4xx naming it."""

    max_request_bytes: int = 8 * 2**20  # the whole JSON body
    max_image_bytes: int = 4 * 2**20  # one decoded image file
    max_image_pixels: int = 4096 * 4096  # width x height, checked before pixels are decoded
    max_images: int = 1  # DeepSeek-VL answers about one image per conversation here
    max_messages: int = 32
    max_text_chars: int = 16_000  # all text parts together
    max_prompt_tokens: int = 4096
    max_new_tokens: int = 256  # the largest max_tokens a client may ask for


class ServeError(Exception):
    """A request the server refuses: ``status`` (4xx), a message naming the problem, OpenAI error fields."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[^;,]*)*)(?P<b64>;base64)?,(?P<data>.*)$",
                      re.DOTALL)


def decode_image(url: str, *, limits: Limits, allow_local: bool, param: str) -> tuple[Image.Image, bytes]:
    """The RGB image an ``image_url.url`` designates, and its file bytes (for the content hash)."""
    if not isinstance(url, str) or not url:
        raise ServeError(400, f"{param} must be a non-empty string: a data URL (data:image/png;base64,...)",
                         param=param, code="invalid_image_url")
    if url.startswith("data:"):
        match = DATA_URL.match(url)
        if match is None or not match.group("b64"):
            raise ServeError(400, f"{param} is a data URL that is not base64-encoded (data:image/png;base64,...)",
                             param=param, code="invalid_image_url")
        mime = match.group("mime") or ""
        if mime and not mime.startswith("image/"):
            raise ServeError(400, f"{param} has media type {mime!r}, not an image (send image/png or image/jpeg)",
                             param=param, code="invalid_image")
        payload = match.group("data")
        if len(payload) * 3 // 4 > limits.max_image_bytes:
            raise ServeError(413, f"{param}: the image is about {len(payload) * 3 // 4:,} bytes, above the limit of "
                                  f"{limits.max_image_bytes:,}; downscale or recompress it", param=param,
                             code="image_too_large")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ServeError(400, f"{param}: the data URL's base64 payload is malformed", param=param,
                             code="invalid_image") from None
    elif url.startswith(("http://", "https://")):
        raise ServeError(400, f"{param}: remote image URLs are not fetched by this server; send the image inline "
                              "as a data URL (data:image/png;base64,...)", param=param, code="unsupported_image_url")
    else:
        path = Path(url[len("file://"):] if url.startswith("file://") else url)
        if not allow_local:
            raise ServeError(403, f"{param}: local file paths are refused (the server was started without "
                                  "--allow-local-images); send the image as a data URL", param=param,
                             code="local_images_disabled")
        if not path.is_file():
            raise ServeError(400, f"{param}: {path} is not a readable file on the server", param=param,
                             code="invalid_image")
        if path.stat().st_size > limits.max_image_bytes:
            raise ServeError(413, f"{param}: {path} is {path.stat().st_size:,} bytes, above the limit of "
                                  f"{limits.max_image_bytes:,}", param=param, code="image_too_large")
        data = path.read_bytes()
    if len(data) > limits.max_image_bytes:
        raise ServeError(413, f"{param}: the image is {len(data):,} bytes, above the limit of "
                              f"{limits.max_image_bytes:,}; downscale or recompress it", param=param,
                         code="image_too_large")
    if not data:
        raise ServeError(400, f"{param}: the image is empty (0 bytes)", param=param, code="invalid_image")
    return _open(data, limits, param), data


def _open(data: bytes, limits: Limits, param: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                pixels = img.width * img.height
                if pixels > limits.max_image_pixels:
                    raise ServeError(413, f"{param}: the image is {img.width}x{img.height} = {pixels:,} pixels, "
                                          f"above the limit of {limits.max_image_pixels:,}; downscale it",
                                     param=param, code="image_too_many_pixels")
                img.load()
                return to_rgb(img.copy(), param)
    except ServeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ServeError(413, f"{param}: the image is too large to decode safely; downscale it", param=param,
                         code="image_too_many_pixels") from None
    except UnidentifiedImageError:
        raise ServeError(400, f"{param}: the data is not an image Pillow can read (send PNG or JPEG)", param=param,
                         code="invalid_image") from None
    except DataError as exc:
        raise ServeError(400, str(exc), param=param, code="invalid_image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ServeError(400, f"{param}: the image is damaged or truncated ({exc})", param=param,
                         code="invalid_image") from None


__all__ = ["Limits", "ServeError", "decode_image"]
