"""Icons: raster images are decoded, SVG is parsed and searched for anything active."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from aimms_portal.errors import InvalidInput
from aimms_portal.packages.icons import MAX_ICON_BYTES, check_icon
from tests.corpus.crafting import png_bytes

SVG_NS = 'xmlns="http://www.w3.org/2000/svg"'
XLINK_NS = 'xmlns:xlink="http://www.w3.org/1999/xlink"'


def image(kind: str, size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    mode = "RGB" if kind == "JPEG" else "RGBA"
    Image.new(mode, size, (200, 30, 30)).save(buffer, kind)
    return buffer.getvalue()


def svg(body: str, attrs: str = "") -> bytes:
    return f'<svg {SVG_NS} {XLINK_NS} width="16" height="16" {attrs}>{body}</svg>'.encode()


def refused(data: bytes, phrase: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_icon(data, "icon.x")
    assert caught.value.code == "invalid_icon"
    assert phrase in caught.value.message
    assert caught.value.message.startswith("the icon 'icon.x' ")


@pytest.mark.parametrize(
    ("kind", "content_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp")],
)
def test_raster_images(kind: str, content_type: str):
    assert check_icon(image(kind), "icon") == content_type


def test_the_type_comes_from_the_bytes_not_the_name():
    assert check_icon(image("PNG"), "icon.svg") == "image/png"
    assert check_icon(png_bytes(), "icon.jpg") == "image/png"


@pytest.mark.parametrize(
    "data",
    [
        svg('<rect width="16" height="16" fill="#369"/>'),
        svg('<defs><linearGradient id="g"/></defs><rect fill="url(#g)" width="1" height="1"/>'),
        svg('<defs><path id="p" d="M0 0h1"/></defs><use href="#p"/><use xlink:href="#p"/>'),
        svg('<style>rect { fill: url(#g); }</style><rect width="1" height="1"/>'),
        svg("<title>Metadata: javascript is text here</title>"),
        b'<?xml version="1.0" encoding="UTF-8"?>\n' + svg("<circle r='4'/>"),
        b"\xef\xbb\xbf" + svg("<circle r='4'/>"),
        b'<svg><circle r="4"/></svg>',  # without a namespace
    ],
)
def test_safe_svg(data: bytes):
    assert check_icon(data, "icon.svg") == "image/svg+xml"


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        (svg("<script>alert(1)</script>"), "contains a script"),
        (svg('<script xlink:href="https://evil.example/x.js"/>'), "contains a script"),
        (b"<svg><script>alert(1)</script></svg>", "contains a script"),
        (svg("<SCRIPT>alert(1)</SCRIPT>"), "contains a script"),
        (svg('<rect width="1" height="1"/>', 'onload="alert(1)"'), "event handler (onload)"),
        (svg('<rect onclick="alert(1)" width="1" height="1"/>'), "event handler (onclick)"),
        (svg("<foreignObject><div>html</div></foreignObject>"), "<foreignobject>"),
        (svg('<iframe src="https://evil.example"/>'), "<iframe>"),
        (svg('<a href="javascript:alert(1)"><rect/></a>'), "javascript: or data: URL"),
        (svg('<a href=" JavaScript:alert(1)"><rect/></a>'), "javascript: or data: URL"),
        (svg('<a xlink:href="java&#9;script:alert(1)"><rect/></a>'), "javascript: or data: URL"),
        (svg('<image href="data:image/svg+xml;base64,PHN2Zz4="/>'), "javascript: or data: URL"),
        (svg('<image href="https://evil.example/track.png"/>'), "outside the file"),
        (svg('<image xlink:href="//evil.example/track.png"/>'), "outside the file"),
        (svg('<use href="other.svg#icon"/>'), "outside the file"),
        (svg('<rect fill="url(https://evil.example/x.svg#g)"/>'), "outside the file"),
        (svg("<rect style=\"fill: url('http://evil.example/p')\"/>"), "outside the file"),
        (svg("<style>@import url(https://evil.example/x.css);</style>"), "imports a style sheet"),
        (svg("<style>rect { background: url(http://x/y) }</style>"), "outside the file"),
        (svg('<a><set to="javascript:alert(1)" attributeName="href"/></a>'), "javascript:"),
        (svg('<a><animate attributeName="xlink:href" values="#a;#b"/></a>'), "animates a link"),
        (b'<?xml-stylesheet href="https://evil.example/x.css"?>' + svg(""), "style sheet"),
        (b'<!DOCTYPE svg [<!ENTITY x "y">]>' + svg("<text>&x;</text>"), "DOCTYPE or entities"),
        (b'<!DOCTYPE svg SYSTEM "http://evil.example/svg.dtd">' + svg(""), "DOCTYPE or entities"),
    ],
)
def test_active_svg_is_refused(data: bytes, phrase: str):
    refused(data, phrase)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        b"<html><script>alert(1)</script></html>",
        b"<svg><unclosed></svg>",
        b"%PDF-1.7",
        b"\x00\x00\x01\x00",  # an ICO header
    ],
)
def test_what_is_no_image_is_refused(data: bytes):
    refused(data, "is not a PNG, JPEG, GIF, WebP or SVG image")


def test_other_formats_pillow_could_read_are_refused():
    refused(image("BMP"), "is not a PNG, JPEG, GIF, WebP or SVG image")
    refused(image("TIFF"), "is not a PNG, JPEG, GIF, WebP or SVG image")


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "GIF", "WEBP"])
def test_damaged_raster_images_are_refused(kind: str):
    data = image(kind, (64, 64))
    refused(data[: len(data) // 2], f"is not a valid {kind} image")


def test_a_png_with_a_bad_checksum_is_refused():
    data = bytearray(png_bytes())
    data[-20] ^= 0xFF  # inside IDAT
    refused(bytes(data), "is not a valid PNG image")


def test_magic_bytes_alone_are_not_enough():
    refused(b"\x89PNG\r\n\x1a\n" + b"<script>alert(1)</script>", "is not a valid PNG image")
    refused(b"GIF89a<script>alert(1)</script>", "is not a valid GIF image")


@pytest.mark.parametrize("side", [2049, 30000])
def test_huge_dimensions_are_refused_before_decoding(side: int):
    # a tiny file that claims side x side pixels (3.6 GB decoded at 30000)
    header = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    ihdr = (
        struct.pack(">I", 13) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    )
    body = zlib.compress(b"", 9)
    idat = (
        struct.pack(">I", len(body))
        + b"IDAT"
        + body
        + struct.pack(">I", zlib.crc32(b"IDAT" + body))
    )
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    refused(b"\x89PNG\r\n\x1a\n" + ihdr + idat + iend, "larger than 2048 x 2048 pixels")


def test_size_limit():
    padding = b"<!--" + b"x" * (MAX_ICON_BYTES - 200) + b"-->"
    ok = svg(padding.decode())
    assert len(ok) <= MAX_ICON_BYTES
    assert check_icon(ok, "icon.svg") == "image/svg+xml"
    refused(svg(padding.decode() + " " * 300), "is larger than 512 KiB")
