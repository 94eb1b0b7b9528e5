"""Images: formats, header rules before decoding, token counts, orientation, modes, messages."""

from __future__ import annotations

import struct
import sys
import zlib
from io import BytesIO
from typing import Any

import numpy as np
import pytest
from PIL import Image

from omniserve.catalog import Catalog, MediaLimits
from omniserve.errors import InvalidMedia
from omniserve.media import image
from omniserve.media.image import (
    DECODE_MESSAGE,
    FOUR_K_MESSAGE,
    HEIC_MESSAGE,
    MAX_SOURCE_PIXELS,
    decode_image,
)
from omniserve.media.policy import ASPECT_MESSAGE, MediaPolicy, billing_policy, open_policy

CATALOG = Catalog.default()
FLASH = billing_policy(CATALOG.get("qwen3-omni-flash"))
TURBO = billing_policy(CATALOG.get("qwen-omni-turbo"))
LIMITS = CATALOG.get("qwen3-omni-flash").media
RED, BLUE = (220, 20, 20), (20, 20, 220)


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def halves(w: int, h: int, left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGB", (w, h), left)
    img.paste(right, (w // 2, 0, w, h))
    return img


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims ``w`` x ``h`` with a tiny IDAT: decoding it would take gigabytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def refused(data: bytes, limits: MediaLimits = LIMITS, policy: MediaPolicy = FLASH) -> str:
    with pytest.raises(InvalidMedia) as info:
        decode_image(data, policy, limits)
    assert info.value.status == 400
    return info.value.message


def close(actual: Any, expected: Any, tolerance: int) -> bool:
    diff = np.abs(np.asarray(actual, dtype=np.int16) - np.asarray(expected, dtype=np.int16))
    return bool(diff.max() <= tolerance)


# -- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params", "tolerance"),
    [
        ("BMP", {}, 0),
        ("JPEG", {"quality": 95}, 6),
        ("PNG", {}, 0),
        ("TIFF", {}, 0),
        ("TIFF", {"compression": "tiff_lzw"}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("WEBP", {"quality": 90}, 8),
    ],
)
def test_every_format_decodes(fmt: str, params: dict[str, Any], tolerance: int) -> None:
    data = encode(halves(128, 96, RED, BLUE), fmt, **params)
    out = decode_image(data, FLASH, LIMITS)
    assert out.format == fmt
    assert (out.source_width, out.source_height) == (128, 96)
    assert (out.width, out.height) == (128, 96)  # already multiples of 32, within 4..1280 tokens
    assert out.pixels.shape == (96, 128, 3)
    assert out.pixels.dtype == np.uint8 and out.pixels.flags.c_contiguous
    assert close(out.pixels[48, 10], RED, tolerance)
    assert close(out.pixels[48, 118], BLUE, tolerance)
    assert out.tokens == 4 * 3 + 2


def test_heic_decodes_with_pillow_heif() -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    buf = BytesIO()
    pillow_heif.from_pillow(halves(128, 96, RED, BLUE)).save(buf, quality=95)
    out = decode_image(buf.getvalue(), FLASH, LIMITS)
    assert out.format == "HEIF"
    assert (out.width, out.height, out.tokens) == (128, 96, 14)
    assert close(out.pixels[48, 10], RED, 12) and close(out.pixels[48, 118], BLUE, 12)


def test_heic_without_pillow_heif_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # what an install without the extra sees
    heic = b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    assert refused(heic) == HEIC_MESSAGE


def test_mpo_counts_as_jpeg() -> None:
    first, second = halves(4000, 2500, RED, BLUE), Image.new("RGB", (4000, 2500))
    data = encode(first, "MPO", save_all=True, append_images=[second], quality=80)
    out = decode_image(data, FLASH, LIMITS)  # above 4K, allowed as JPEG
    assert out.format == "MPO"
    assert (out.source_width, out.source_height) == (4000, 2500)
    assert close(out.pixels[10, 10], RED, 8)


# -- sizes and tokens (the vendor's and the open processors' worked examples) -----------------


@pytest.mark.parametrize(
    ("policy", "source", "target", "tokens"),
    [
        (FLASH, (640, 480), (640, 480), 302),
        (FLASH, (1280, 720), (1280, 704), 882),
        (FLASH, (1920, 1080), (1504, 832), 1224),
        (TURBO, (640, 480), (644, 476), 393),
        (TURBO, (1280, 720), (1288, 728), 1198),
        (TURBO, (1920, 1080), (1316, 728), 1224),
        (open_policy("qwen2.5-omni"), (640, 480), None, 391),
        (open_policy("qwen2.5-omni"), (1280, 720), None, 1196),
        (open_policy("qwen2.5-omni"), (1920, 1080), None, 2691),
        (open_policy("qwen3-omni"), (640, 480), None, 300),
        (open_policy("qwen3-omni"), (1280, 720), None, 880),
        (open_policy("qwen3-omni"), (1920, 1080), None, 2040),
    ],
)
def test_token_counts_match_the_reference(
    policy: MediaPolicy,
    source: tuple[int, int],
    target: tuple[int, int] | None,
    tokens: int,
) -> None:
    out = decode_image(encode(Image.new("RGB", source, RED), "PNG"), policy, LIMITS)
    assert (out.source_width, out.source_height) == source
    if target is not None:
        assert (out.width, out.height) == target
    assert out.pixels.shape == (out.height, out.width, 3)
    assert out.width % policy.factor == 0 and out.height % policy.factor == 0
    assert out.tokens == tokens
    assert close(out.pixels, RED, 0)


def test_explicit_size_is_height_then_width() -> None:
    out = decode_image(encode(noise(64, 48), "PNG"), FLASH, LIMITS, size=(96, 160))
    assert (out.height, out.width) == (96, 160)
    assert out.pixels.shape == (96, 160, 3)
    assert out.tokens == 3 * 5 + 2
    assert (out.source_width, out.source_height) == (64, 48)


# -- orientation, draft, modes ---------------------------------------------------------------


def test_exif_rotated_jpeg_is_shown_upright() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: displayed rotated 90° clockwise
    data = encode(halves(400, 200, RED, BLUE), "JPEG", quality=95, exif=exif)
    out = decode_image(data, FLASH, LIMITS)
    assert (out.source_width, out.source_height) == (200, 400)
    assert (out.width, out.height) == (192, 384)  # FLASH.image_size(400, 200): 12.5 rounds to 12
    assert close(out.pixels[20, 96], RED, 8)  # the stored left half is now on top
    assert close(out.pixels[-20, 96], BLUE, 8)


def test_exif_rotated_tiff_is_not_rotated_twice() -> None:
    """Pillow orients TIFFs itself while loading; the orientation must be applied once."""
    exif = Image.Exif()
    exif[0x0112] = 8
    data = encode(halves(256, 128, RED, BLUE), "TIFF", exif=exif)
    out = decode_image(data, FLASH, LIMITS)
    assert (out.width, out.height) == (128, 256)
    assert close(out.pixels[-20, 64], RED, 0)  # rotated 90° counter-clockwise: left goes down
    assert close(out.pixels[20, 64], BLUE, 0)


@pytest.mark.parametrize(("fmt", "params"), [("PNG", {}), ("WEBP", {"lossless": True})])
def test_exif_orientation_in_png_and_webp(fmt: str, params: dict[str, Any]) -> None:
    exif = Image.Exif()
    exif[0x0112] = 3  # upside down
    data = encode(halves(128, 64, RED, BLUE), fmt, exif=exif, **params)
    out = decode_image(data, FLASH, LIMITS)
    assert (out.width, out.height) == (128, 64)
    assert close(out.pixels[32, 10], BLUE, 0) and close(out.pixels[32, 118], RED, 0)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return encode(halves(4000, 3000, RED, BLUE), "JPEG", quality=90)


def test_jpeg_decodes_at_reduced_scale(big_jpeg: bytes) -> None:
    with image._open(big_jpeg) as img:
        plan = image._load(img, FLASH.image_size)
        assert plan.source == (4000, 3000)
        assert plan.target == (1312, 960)
        assert img.size == (2000, 1500)  # libjpeg decoded at 1/2: the largest scale still >= target
    out = decode_image(big_jpeg, FLASH, LIMITS)
    assert (out.width, out.height, out.tokens) == (1312, 960, 41 * 30 + 2)
    assert close(out.pixels[480, 100], RED, 8) and close(out.pixels[480, 1200], BLUE, 8)


def test_jpeg_draft_with_exif_rotation_drafts_the_stored_sides() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(halves(4000, 3000, RED, BLUE), "JPEG", quality=80, exif=exif)
    with image._open(data) as img:
        plan = image._load(img, FLASH.image_size)
        assert plan.source == (3000, 4000)
        assert plan.target == (960, 1312)
        assert img.size == (2000, 1500)  # stored sideways, drafted at 1/2
    out = decode_image(data, FLASH, LIMITS)
    assert out.pixels.shape == (1312, 960, 3)
    assert close(out.pixels[100, 480], RED, 8) and close(out.pixels[1200, 480], BLUE, 8)


def test_jpeg_draft_never_goes_below_the_target(big_jpeg: bytes) -> None:
    with image._open(big_jpeg) as img:
        plan = image._load(img, lambda h, w: (700, 900))
        assert img.size == (1000, 750)  # 1/4 is the last scale that still covers 900 x 700
        assert plan.target == (900, 700)


def test_transparency_is_flattened_on_white() -> None:
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((*RED, 255), (32, 0, 64, 64))
    out = decode_image(encode(rgba, "PNG"), FLASH, LIMITS)
    assert (out.width, out.height) == (64, 64)
    assert tuple(out.pixels[10, 2]) == (255, 255, 255)
    assert tuple(out.pixels[10, 60]) == RED
    half = Image.new("RGBA", (64, 64), (0, 0, 0, 128))
    assert close(decode_image(encode(half, "PNG"), FLASH, LIMITS).pixels, 127, 1)


def test_palette_and_grey_alpha_are_flattened_on_white() -> None:
    palette = Image.new("P", (64, 64), 0)
    palette.putpalette([*RED, *BLUE])
    palette.paste(1, (32, 0, 64, 64))
    out = decode_image(encode(palette, "PNG", transparency=0), FLASH, LIMITS)
    assert tuple(out.pixels[10, 2]) == (255, 255, 255) and tuple(out.pixels[10, 60]) == BLUE
    la = Image.new("LA", (64, 64), (0, 0))
    assert tuple(decode_image(encode(la, "PNG"), FLASH, LIMITS).pixels[5, 5]) == (255, 255, 255)
    keyed = Image.new("RGB", (64, 64), RED)
    out = decode_image(encode(keyed, "PNG", transparency=RED), FLASH, LIMITS)
    assert tuple(out.pixels[5, 5]) == (255, 255, 255)


@pytest.mark.parametrize(
    ("img", "fmt", "expected", "tolerance"),
    [
        (Image.new("L", (64, 64), 77), "PNG", (77, 77, 77), 0),
        (Image.new("1", (64, 64), 1), "PNG", (255, 255, 255), 0),
        (Image.new("P", (64, 64), 0), "PNG", (0, 0, 0), 0),
        (Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG", (255, 0, 0), 8),
        (Image.new("CMYK", (64, 64), (255, 0, 0, 0)), "TIFF", (0, 255, 255), 0),
        (Image.new("RGB", (64, 64), RED), "BMP", RED, 0),
    ],
)
def test_other_modes_become_rgb(
    img: Image.Image, fmt: str, expected: tuple[int, int, int], tolerance: int
) -> None:
    data = encode(img, fmt)
    out = decode_image(data, FLASH, LIMITS)
    assert out.pixels.shape == (64, 64, 3)
    assert close(out.pixels, expected, tolerance)


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    grey = np.full((64, 64), 0x8000, dtype=np.uint16)
    grey[:, 32:] = 0xFFFF
    data = encode(Image.fromarray(grey), "PNG")
    out = decode_image(data, FLASH, LIMITS)
    assert tuple(out.pixels[5, 5]) == (128, 128, 128)
    assert tuple(out.pixels[5, 60]) == (255, 255, 255)


# -- refusals --------------------------------------------------------------------------------


def test_pillow_bomb_check_is_replaced_by_ours() -> None:
    assert Image.MAX_IMAGE_PIXELS is None


def test_empty_and_non_images_fail_to_decode() -> None:
    assert refused(b"") == DECODE_MESSAGE
    assert refused(b"<!doctype html><html><body>Not found</body></html>") == DECODE_MESSAGE
    assert refused(np.random.default_rng(1).bytes(4096)) == DECODE_MESSAGE
    assert refused(b"\x89PNG\r\n\x1a\n" + b"\0" * 100) == DECODE_MESSAGE


def test_gif_is_not_a_vendor_format() -> None:
    assert refused(encode(Image.new("RGB", (64, 64), RED), "GIF")) == DECODE_MESSAGE


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP"])
def test_truncated_files_fail_to_decode(fmt: str) -> None:
    data = encode(noise(96, 96, seed=3), fmt)
    assert refused(data[: len(data) // 2]) == DECODE_MESSAGE


def test_too_many_bytes_is_refused_before_anything() -> None:
    limit = LIMITS.image_max_bytes
    oversized = b"\x89PNG\r\n\x1a\n" + b"\0" * (limit - 7)
    assert refused(oversized) == f"The image is larger than {limit} bytes."
    assert refused(oversized[:-1]) == DECODE_MESSAGE  # at the limit: inspected, then refused


def test_pixel_bomb_is_refused_from_the_header() -> None:
    expected = (
        f"The image has 50000x50000 pixels, more than the {MAX_SOURCE_PIXELS} this server decodes."
    )
    assert refused(png_header_only(50_000, 50_000)) == expected
    assert refused(png_header_only(9000, 9000)).startswith("The image has 9000x9000 pixels")


@pytest.mark.parametrize(
    ("w", "h", "ok"),
    [
        (10, 10, False),
        (11, 11, True),
        (10, 500, False),
        (500, 10, False),
        (1, 20_000, False),
        (20_000, 1, False),
        (2200, 11, True),  # exactly 200:1
        (2211, 11, False),  # 201:1
        (11, 2211, False),
    ],
)
def test_side_and_aspect_rules(w: int, h: int, ok: bool) -> None:
    data = encode(Image.new("RGB", (w, h), RED), "PNG")
    if ok:
        out = decode_image(data, FLASH, LIMITS)
        assert (out.source_width, out.source_height) == (w, h)
    else:
        assert refused(data) == ASPECT_MESSAGE


def test_tiny_image_is_upscaled_to_the_minimum() -> None:
    out = decode_image(encode(Image.new("RGB", (11, 11), RED), "PNG"), FLASH, LIMITS)
    assert (out.width, out.height, out.tokens) == (64, 64, 6)


def test_side_rules_come_before_decoding() -> None:
    assert refused(png_header_only(1, 20_000)) == ASPECT_MESSAGE


def test_above_4k_only_jpeg_and_png() -> None:
    big = Image.new("RGB", (5000, 3000), RED)
    assert refused(encode(big, "WEBP", quality=10, method=0)) == FOUR_K_MESSAGE
    assert refused(encode(big, "TIFF", compression="tiff_lzw")) == FOUR_K_MESSAGE
    out = decode_image(encode(big, "PNG"), FLASH, LIMITS)
    assert (out.source_width, out.source_height) == (5000, 3000)
    exactly_4k = encode(Image.new("RGB", (3840, 2160), RED), "WEBP", quality=10, method=0)
    assert decode_image(exactly_4k, FLASH, LIMITS).format == "WEBP"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP"])
def test_damaged_files_are_decoded_or_refused_never_crash(fmt: str) -> None:
    """Deterministic byte damage: the outcome is an image or the decode message, nothing else."""
    data = bytearray(encode(noise(48, 40, seed=7), fmt))
    rng = np.random.default_rng(11)
    for _ in range(40):
        damaged = bytearray(data)
        for at in rng.integers(0, min(len(data), 256), 3):
            damaged[at] = int(rng.integers(0, 256))
        try:
            out = decode_image(bytes(damaged), FLASH, LIMITS)
        except InvalidMedia as exc:
            assert exc.status == 400
        else:
            assert out.pixels.shape == (out.height, out.width, 3)


# -- large full-scale JPEGs go through FFmpeg -----------------------------------------------------

OPEN_25 = open_policy("qwen2.5-omni")


def photo(w: int, h: int) -> Image.Image:
    """Smooth gradients with mild noise: a photo-like picture whose resize is well defined."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=-1)
    grain = np.random.default_rng(1).integers(0, 12, (h, w, 3))
    return Image.fromarray((base + grain).clip(0, 255).astype(np.uint8))


def pillow_reference(data: bytes, target: tuple[int, int]) -> np.ndarray[Any, Any]:
    with Image.open(BytesIO(data)) as img:
        return np.asarray(img.convert("RGB").resize(target, Image.Resampling.BICUBIC))


def test_large_full_scale_jpeg_takes_the_ffmpeg_path() -> None:
    data = encode(photo(2400, 1800), "JPEG", quality=92)
    with Image.open(BytesIO(data)) as img:
        assert image._ffmpeg_jpeg(data, img, OPEN_25.image_size) is not None
    out = decode_image(data, OPEN_25, LIMITS)
    assert (out.width, out.height) == (2408, 1792)
    assert out.tokens == OPEN_25.image_tokens(1792, 2408)
    assert out.pixels.flags.writeable and out.pixels.flags.c_contiguous
    diff = np.abs(out.pixels.astype(int) - pillow_reference(data, (2408, 1792)))
    assert diff.mean() < 1.5  # chroma upsampling differs by a level or two, no more


def test_small_or_reducible_jpegs_stay_with_pillow() -> None:
    small = encode(photo(1000, 800), "JPEG")
    with Image.open(BytesIO(small)) as img:
        assert image._ffmpeg_jpeg(small, img, OPEN_25.image_size) is None
    big = encode(photo(4000, 3000), "JPEG")
    with Image.open(BytesIO(big)) as img:  # flash's budget: Pillow's draft decodes at 1/2
        assert image._ffmpeg_jpeg(big, img, FLASH.image_size) is None


def test_ffmpeg_path_applies_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(halves(2400, 1800, (255, 0, 0), (0, 0, 255)), "JPEG", exif=exif.tobytes())
    out = decode_image(data, OPEN_25, LIMITS)
    assert (out.width, out.height) == (1792, 2408)  # shown upright: tall
    top, bottom = out.pixels[10, out.width // 2], out.pixels[-10, out.width // 2]
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_ffmpeg_path_refuses_a_truncated_jpeg() -> None:
    data = encode(photo(2400, 1800), "JPEG")
    assert refused(data[: len(data) // 2], policy=OPEN_25) == DECODE_MESSAGE
