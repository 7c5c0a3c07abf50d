"""Images a preview shows: outputs, attachments, data: URIs and the example's own figures.

An image is shown only once Pillow has read its header and found the format it claims and a
pixel count within the limit (a small file can be a decompression bomb). The header is read
from the whole decoded file, however far into it the pixel data starts (PNGs often carry
iTXt or iCCP chunks of many kilobytes before IDAT); the file itself is already bounded by the
size limit, and Pillow bounds what it keeps of text and profile chunks.
"""
from __future__ import annotations

import binascii
import io

IMAGE_MIMES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF"}
_B64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_CHARS_AND_PAD = _B64_CHARS + b"="


def clean_base64_image(mime: str, b64: str, max_bytes: int,
                       max_pixels: int) -> tuple[str, str | None]:
    """A base64 image without whitespace, and why it cannot be shown (None when it can).

    The header is looked for in the first 48 KiB, then in the whole image when it is not there
    (metadata chunks can come first): most images are read no further than that.
    """
    try:
        raw = b64.encode("ascii")
    except UnicodeEncodeError:
        return "", "image data that is not base64"
    spaced = b"\n" in raw or b" " in raw or b"\r" in raw or b"\t" in raw
    if spaced:
        raw = raw.translate(None, b" \t\r\n")
    if len(raw) > max_bytes * 4 // 3:
        return "", f"image larger than {max_bytes // 1024:,} KiB"
    # Base64 characters, then at most two `=` (checked without copying megabytes).
    padding = 2 if raw.endswith(b"==") else 1 if raw.endswith(b"=") else 0
    if (len(raw) == padding or raw.translate(None, _B64_CHARS_AND_PAD)
            or raw.count(b"=") != padding or (len(raw) - padding) % 4 == 1):
        return "", "image data that is not base64"
    problem = None
    for part in (raw[:_HEAD], raw) if len(raw) > _HEAD else (raw,):
        try:
            problem = image_problem(IMAGE_MIMES[mime], binascii.a2b_base64(part), max_pixels)
        except binascii.Error:
            return "", "image data that is not base64"
        if problem is None or "not a valid" not in problem:
            break
    if problem:
        return "", problem
    return (raw.decode("ascii") if spaced else b64), None


_HEAD = 64 * 1024  # base64 characters: 48 KiB of image


def image_problem(kind: str, data: bytes, max_pixels: int) -> str | None:
    """Why image bytes of a format ("PNG", "JPEG", "GIF") cannot be shown, or None."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=[kind]) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        return "image with too many pixels (a decompression bomb)"
    except MemoryError:
        raise
    except Exception:  # Pillow raises assorted types on broken data
        return f"image that is not a valid {kind}"
    if width * height > max_pixels:
        return f"image of {width}x{height} pixels (the limit is {max_pixels:,})"
    return None


_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg",
               b"GIF87a": "image/gif", b"GIF89a": "image/gif"}


def sniff_image(data: bytes, name: str) -> str | None:
    """The MIME type of an image file by its first bytes (SVG by its name and first tag)."""
    for signature, mime in _SIGNATURES.items():
        if data.startswith(signature):
            return mime
    if name.lower().endswith(".svg") and b"<svg" in data[:4096]:
        return "image/svg+xml"
    return None


def file_image_uri(data: bytes, name: str, max_bytes: int,
                   max_pixels: int) -> tuple[str, str | None]:
    """A file's bytes as a data: URI an <img> can show, or "" and why not.

    SVG is only ever shown through <img>, where it can neither run script nor load anything.
    """
    if len(data) > max_bytes:
        return "", f"larger than {max_bytes // 1024:,} KiB"
    mime = sniff_image(data, name)
    if mime is None:
        return "", "not a PNG, JPEG, GIF or SVG image"
    if mime != "image/svg+xml":
        problem = image_problem(IMAGE_MIMES[mime], data, max_pixels)
        if problem:
            return "", problem
    return f"data:{mime};base64,{binascii.b2a_base64(data, newline=False).decode()}", None
