"""Checking app icons before the portal serves them to browsers.

An icon is served from the portal's own origin, so a hostile one could run script in
every visitor's session. Raster images are accepted only if Pillow decodes them as the
format their first bytes claim; SVG only if it parses as plain XML (no DOCTYPE, no
entities) and holds nothing that runs or loads anything: no scripts, event handlers,
``foreignObject``, ``javascript:``/``data:`` URLs or references outside the file.
"""

from __future__ import annotations

import io
import re
import warnings
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from PIL import Image

from aimms_portal.errors import InvalidInput

MAX_ICON_BYTES = 512 * 1024
#: Larger images would take too much memory to decode (4 bytes a pixel).
MAX_ICON_PIXELS = 2048

_RASTER = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "GIF": "image/gif",
    "WEBP": "image/webp",
}
SVG_TYPE = "image/svg+xml"
CONTENT_TYPES = frozenset([*_RASTER.values(), SVG_TYPE])

# elements that run code, embed other documents or change links
_FORBIDDEN_ELEMENTS = {
    "script",
    "foreignobject",
    "iframe",
    "embed",
    "object",
    "handler",
    "listener",
    "include",
}
_URL_SCHEME = re.compile(r"^\s*(javascript|vbscript|data)\s*:", re.IGNORECASE)
_CSS_URL = re.compile(r"url\(\s*['\"]?\s*([^)'\"]*)", re.IGNORECASE)


def icon_error(name: str, why: str) -> InvalidInput:
    """The ``invalid_icon`` error "the icon '<name>' <why>"."""
    return InvalidInput(f"the icon {name!r} {why}", code="invalid_icon")


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_icon(data: bytes, name: str) -> str:
    """The content type of a valid icon (``image/png``, ``image/jpeg``, ``image/gif``,
    ``image/webp`` or ``image/svg+xml``).

    ``name`` is the icon's path in the bundle, for messages only: the type comes from
    the bytes.

    Raises:
        InvalidInput: code ``invalid_icon``, with the reason.
    """
    if len(data) > MAX_ICON_BYTES:
        raise icon_error(name, "is larger than 512 KiB")
    kind = _sniff(data)
    if kind is not None:
        _check_raster(data, name, kind)
        return _RASTER[kind]
    if _looks_like_xml(data):
        _check_svg(data, name)
        return SVG_TYPE
    raise icon_error(name, "is not a PNG, JPEG, GIF, WebP or SVG image")


def _check_raster(data: bytes, name: str, kind: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[kind]) as image:
                width, height = image.size
                if width > MAX_ICON_PIXELS or height > MAX_ICON_PIXELS:
                    raise icon_error(
                        name, f"is larger than {MAX_ICON_PIXELS} x {MAX_ICON_PIXELS} pixels"
                    )
                image.load()
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard fires at open for images far beyond ours
        too_big = f"is larger than {MAX_ICON_PIXELS} x {MAX_ICON_PIXELS} pixels"
        raise icon_error(name, too_big) from None
    except Exception as exc:  # Pillow reports bad data with many exception classes
        raise InvalidInput(
            f"the icon {name!r} is not a valid {kind} image",
            code="invalid_icon",
            log_detail=f"{type(exc).__name__}: {exc}",
        ) from None


def _looks_like_xml(data: bytes) -> bool:
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"<")


def _local(tag: str) -> str:
    # "{http://www.w3.org/2000/svg}rect" -> "rect"
    return tag.rsplit("}", 1)[-1].lower()


def _check_svg(data: bytes, name: str) -> None:
    if re.search(rb"<\?xml-stylesheet", data, re.IGNORECASE):
        raise icon_error(name, "loads a style sheet from outside the file")
    try:
        root = SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise icon_error(name, "has a DOCTYPE or entities, which SVG icons must not have") from None
    except (ParseError, ValueError) as exc:
        raise InvalidInput(
            f"the icon {name!r} is not a PNG, JPEG, GIF, WebP or SVG image",
            code="invalid_icon",
            log_detail=f"XML: {exc}",
        ) from None
    if _local(root.tag) != "svg":
        raise icon_error(name, "is not a PNG, JPEG, GIF, WebP or SVG image")
    for element in root.iter():
        _check_element(element, name)


def _check_element(element: Element, name: str) -> None:
    tag = _local(element.tag) if isinstance(element.tag, str) else ""
    if tag == "script":
        raise icon_error(name, "contains a script")
    if tag in _FORBIDDEN_ELEMENTS:
        raise icon_error(name, f"contains a <{tag}> element, which SVG icons must not have")
    if tag == "style" and element.text:
        _check_css(element.text, name)
    for attribute, value in element.attrib.items():
        local = _local(attribute)
        if local.startswith("on"):
            raise icon_error(name, f"has an event handler ({local}), which could run script")
        if _URL_SCHEME.match(value) or "javascript:" in re.sub(r"\s", "", value.lower()):
            raise icon_error(name, "has a javascript: or data: URL")
        if local == "href" and not value.strip().startswith("#"):
            raise icon_error(name, "refers to something outside the file (only #id links)")
        if local == "attributename" and value.strip().lower().rsplit(":", 1)[-1] == "href":
            raise icon_error(name, "animates a link, which SVG icons must not do")
        # style="...", fill="url(...)", filter="url(...)": CSS may load things too
        _check_css(value, name)


def _check_css(text: str, name: str) -> None:
    if "@import" in text.lower():
        raise icon_error(name, "imports a style sheet from outside the file")
    for target in _CSS_URL.findall(text):
        if not target.strip().startswith("#"):
            raise icon_error(name, "refers to something outside the file (only #id links)")
