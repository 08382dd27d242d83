"""Turning an uploaded file into a decoded image, or a clear 4xx saying why not."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

# WebP: what browsers now save images from the web as.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
ACCEPTED_IN_WORDS = "a PNG, JPEG or WebP image"


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    if not data:
        raise InvalidInput("the uploaded file is empty", loc=["body", "file"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedMediaType(f"the uploaded file is not {ACCEPTED_IN_WORDS}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"image rejected as a decompression bomb: {exc}") from None
    # Checked from the header, before any pixel is decoded.
    if image.width * image.height > max_pixels:
        raise PayloadTooLarge(
            f"image is {image.width}x{image.height} = {image.width * image.height} pixels; the limit is {max_pixels}"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"the {image.format} image could not be decoded: {exc}", loc=["body", "file"]) from None
    return image
