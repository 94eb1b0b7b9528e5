"""Images: checked from the header, decoded at the smallest useful scale, resized for the model.

Every rule that can be judged from the header (bytes, pixels, sides, aspect, format above 4K) is
judged before a pixel is decoded, so a hostile file costs a header parse. JPEG decodes straight at
1/2, 1/4 or 1/8 scale when the target is that much smaller (libjpeg's DCT scaling), and HEIC
may use an embedded thumbnail that is a scaled copy. Any failure of the decoder is the vendor's
one decode message: a client learns nothing about our decoder from it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from types import ModuleType
from typing import Any

import av
import numpy as np
from PIL import (
    BmpImagePlugin,
    ExifTags,
    Image,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from omniserve.catalog import MediaLimits
from omniserve.errors import InvalidMedia
from omniserve.job import ImageInput
from omniserve.media.budget import DecodeBudget, RequestBudget, check_decode, image_cost
from omniserve.media.policy import ASPECT_MESSAGE, MediaPolicy

# Importing a plugin registers it with Pillow; naming them here keeps the set explicit.
_PLUGINS = (
    BmpImagePlugin,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

MAX_SOURCE_PIXELS = 64_000_000
"""Largest source this server decodes (an 8000x8000 photo); bigger headers are refused unread."""

FOUR_K_PIXELS = 3840 * 2160
FORMATS = ("BMP", "JPEG", "PNG", "TIFF", "WEBP")  # JPEG opens MPO (JPEG + extra pictures) too
HEIF_FORMAT = "HEIF"  # pillow-heif's name for HEIC, when the optional extra is installed
_ANY_SIZE_FORMATS = frozenset({"JPEG", "MPO", "PNG"})
_HEIC_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)

DECODE_MESSAGE = "Failed to decode the image during the data inspection."
FOUR_K_MESSAGE = "Images larger than 4K must be JPEG or PNG."
HEIC_MESSAGE = "This server cannot decode HEIC images (its optional pillow-heif is not installed)."

# Pillow's own bomb check runs inside Image.open and warns or raises before the size can be
# read, and warning filters are not thread-safe; this module's header check replaces it.
Image.MAX_IMAGE_PIXELS = None

SizeRule = Callable[[int, int], tuple[int, int]]
"""From the displayed source (height, width) to the target (height, width)."""

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = frozenset({5, 6, 7, 8})
# Formats whose loader can do less work when told the target size first (Image.draft).
_DRAFT_FORMATS = frozenset({"JPEG", "MPO", HEIF_FORMAT})


def decode_image(
    data: bytes,
    policy: MediaPolicy,
    limits: MediaLimits,
    *,
    size: tuple[int, int] | SizeRule | None = None,
    budget: DecodeBudget | None = None,
    request: RequestBudget | None = None,
) -> ImageInput:
    """Decode, orient and resize one image; raises ``InvalidMedia`` with the vendor's message.

    ``size`` is the target (height, width), or a rule giving it from the displayed source size;
    by default the policy's image size. The decode is priced from the header (``budget.py``)
    and refused, or made to wait for the server's ``budget``, before any pixel is decoded; its
    price is spent from the ``request``'s budget. Synchronous and CPU-bound: run it in a worker
    thread.
    """
    if not data:
        raise InvalidMedia(DECODE_MESSAGE)
    if len(data) > limits.image_max_bytes:
        raise InvalidMedia(f"The image is larger than {limits.image_max_bytes} bytes.")
    try:
        return _decode(data, policy, limits, _rule(size, policy), budget, request)
    except InvalidMedia:
        raise
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, struct.error...
        raise InvalidMedia(DECODE_MESSAGE) from exc


def _rule(size: tuple[int, int] | SizeRule | None, policy: MediaPolicy) -> SizeRule:
    if size is None:
        return policy.image_size
    if callable(size):
        return size
    fixed = size
    return lambda h, w: fixed


def _decode(
    data: bytes,
    policy: MediaPolicy,
    limits: MediaLimits,
    rule: SizeRule,
    budget: DecodeBudget | None,
    request: RequestBudget | None,
) -> ImageInput:
    # The budget is held until the decoded source is closed (the outer stack unwinds last).
    with ExitStack() as held, _open(data) as img:
        _check_header(img.size, img.format or "", limits)
        cost = _cost(img, rule)
        what = f"this {img.size[0]}x{img.size[1]} {img.format or ''} image ({img.mode})"
        check_decode(cost, what)
        if request is not None:
            request.spend(cost, what)
        if budget is not None:
            held.enter_context(budget.hold(cost, what))
        fast = _ffmpeg_jpeg(data, img, rule)
        if fast is not None:
            plan, pixels = fast
        else:
            plan = _load(img, rule)
            # Writable: engines may normalise in place.
            pixels = np.array(_to_rgb(img, plan), dtype=np.uint8)
    width, height = plan.target
    return ImageInput(
        pixels=pixels,
        width=width,
        height=height,
        source_width=plan.source[0],
        source_height=plan.source[1],
        format=img.format or "",
        tokens=policy.image_tokens(height, width),
    )


# From this many pixels on, a JPEG that cannot be decoded at a reduced scale goes through
# FFmpeg: its decoder hands planar YUV to swscale, which converts and resizes in one pass
# (a 12 MP photo: 141 ms against Pillow's 337 ms; pixels within a level or two of Pillow's).
_FFMPEG_JPEG_MIN_PIXELS = 2_000_000


def _ffmpeg_jpeg(
    data: bytes, img: Image.Image, rule: SizeRule
) -> tuple[_Plan, np.ndarray[Any, np.dtype[np.uint8]]] | None:
    """The resized pixels of a large full-scale JPEG, or ``None`` to let Pillow decode it."""
    w, h = img.size
    if img.format != "JPEG" or img.mode not in ("RGB", "L") or w * h < _FFMPEG_JPEG_MIN_PIXELS:
        return None
    plan = _plan(img, rule)
    tw, th = plan.stored_target
    if tw * 2 <= w and th * 2 <= h:
        return None  # Pillow's draft decodes at 1/2 or less: cheaper still
    try:
        with av.open(BytesIO(data), mode="r", format="jpeg_pipe") as container:
            stream = container.streams.video[0]
            stream.codec_context.options = {"err_detect": "explode"}  # truncation is an error
            frame = next(container.decode(stream))
            rgb = frame.reformat(width=tw, height=th, format="rgb24", interpolation="BICUBIC")
            pixels = rgb.to_ndarray()
    except Exception:
        return None  # Pillow decodes it, or names what is wrong with it
    if plan.orientation != 1:
        turned = Image.fromarray(pixels).transpose(_TRANSPOSE[plan.orientation])
        pixels = np.array(turned, dtype=np.uint8)
    return plan, np.ascontiguousarray(pixels)


def _open(data: bytes) -> Image.Image:
    formats = FORMATS + _heif_formats()
    if HEIF_FORMAT not in formats and data[4:8] == b"ftyp" and data[8:12] in _HEIC_BRANDS:
        raise InvalidMedia(HEIC_MESSAGE)
    return Image.open(BytesIO(data), formats=formats)


def _heif_formats() -> tuple[str, ...]:
    """``("HEIF",)`` when the optional pillow-heif is importable (registered once)."""
    try:
        module = importlib.import_module("pillow_heif")
    except ImportError:
        return ()
    _register_heif(module)
    return (HEIF_FORMAT,)


@cache
def _register_heif(module: ModuleType) -> None:
    # Thumbnails stay on: Image.draft may pick one that is a scaled copy of the picture.
    module.register_heif_opener()


def _cost(img: Image.Image, rule: SizeRule) -> int:
    """What decoding ``img`` will peak at, from its header: the size the decoder produces
    (JPEG decodes at 1/2, 1/4 or 1/8 when the target allows) in the mode it stores."""
    w, h = img.size
    scale = 1
    if img.format in ("JPEG", "MPO"):
        tw, th = _plan(img, rule).stored_target
        fits = min(w // max(tw, 1), h // max(th, 1))
        scale = next((s for s in (8, 4, 2) if fits >= s), 1)
    transparent = "transparency" in img.info or img.mode in ("LA", "La", "PA", "RGBA", "RGBa")
    return image_cost(-(-w // scale), -(-h // scale), img.mode, transparent=transparent)


def _check_header(size: tuple[int, int], fmt: str, limits: MediaLimits) -> None:
    """The rules a header alone decides, before any pixel is decoded."""
    w, h = size
    if w * h > MAX_SOURCE_PIXELS:
        raise InvalidMedia(
            f"The image has {w}x{h} pixels, more than the {MAX_SOURCE_PIXELS} this server decodes."
        )
    if min(w, h) <= limits.image_min_side or max(w, h) / min(w, h) > limits.image_max_aspect:
        raise InvalidMedia(ASPECT_MESSAGE)
    if w * h > FOUR_K_PIXELS and fmt not in _ANY_SIZE_FORMATS:
        raise InvalidMedia(FOUR_K_MESSAGE)


@dataclass(frozen=True)
class _Plan:
    orientation: int  # EXIF orientation still to apply, 1 when none
    source: tuple[int, int]  # (width, height) as displayed
    target: tuple[int, int]  # (width, height) as displayed

    @property
    def stored_target(self) -> tuple[int, int]:
        """The target before orientation: what to resize the decoded pixels to."""
        w, h = self.target
        return (h, w) if self.orientation in _SWAPS_SIDES else (w, h)


def _load(img: Image.Image, rule: SizeRule) -> _Plan:
    """Load the pixels, letting the decoder shrink them first where it can."""
    if img.format in _DRAFT_FORMATS:
        # The header says the orientation; draft wants the target before the load.
        plan = _plan(img, rule)
        img.draft("RGB", plan.stored_target)
        img.load()
        return plan
    img.load()  # TIFF orients itself while loading (and drops the tag); read it afterwards
    return _plan(img, rule)


def _plan(img: Image.Image, rule: SizeRule) -> _Plan:
    orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation not in _TRANSPOSE:
        orientation = 1
    w, h = img.size
    if orientation in _SWAPS_SIDES:
        w, h = h, w
    th, tw = rule(h, w)
    return _Plan(orientation, (w, h), (tw, th))


def _to_rgb(img: Image.Image, plan: _Plan) -> Image.Image:
    """Resize in the cheapest faithful mode, orient, then flatten transparency onto white."""
    out: Image.Image = img
    transparent = "transparency" in img.info
    if img.mode.startswith("I"):  # 16-bit greys: Pillow's own conversion clips at 255
        out = Image.fromarray((np.asarray(img).clip(0, 65535) >> 8).astype(np.uint8))
    elif img.mode in ("LA", "La", "PA", "RGBa") or transparent:
        out = img.convert("RGBA")
    elif img.mode == "F":
        out = img.convert("L")
    elif img.mode not in ("RGB", "RGBA", "L"):
        out = img.convert("RGB")  # 1, P, CMYK, YCbCr, LAB, HSV
    if out.size != plan.stored_target:
        out = out.resize(plan.stored_target, Image.Resampling.BICUBIC)
    if plan.orientation != 1:
        out = out.transpose(_TRANSPOSE[plan.orientation])
    if out.mode == "RGBA":
        white = Image.new("RGB", out.size, (255, 255, 255))
        white.paste(out, mask=out.getchannel("A"))
        return white
    return out.convert("RGB") if out.mode != "RGB" else out
