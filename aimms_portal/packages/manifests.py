"""The manifests of runtime packages (``runtime.json``) and app bundles (``app.json``).

The models follow docs/formats.md field by field. They are strict: unknown fields are
refused and no value is converted into another type ("1" is not 1, true is not 1).
:func:`parse_runtime_manifest` and :func:`parse_app_manifest` report every problem of
a manifest at once, in plain words, so a publisher can fix them in one go.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, TypeVar

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from aimms_portal.errors import InvalidInput
from aimms_portal.packages.archives import ArchiveError, check_entry_name, human_size

MANIFEST_FORMAT = 1
MAX_MANIFEST_BYTES = 64 * 1024
MAX_PROCEDURES = 50
MAX_VERSION_CHARS = 64
MAX_SPECIFIER_CHARS = 200

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
NAME_RULE = "must be 2-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"


def parse_version(text: str) -> Version:
    """``text`` as a PEP 440 version.

    Raises:
        InvalidInput: not a PEP 440 version (code ``invalid_version``).
    """
    try:
        return Version(text)
    except InvalidVersion:
        raise InvalidInput(
            f"{text[:80]!r} is not a version such as 1.0 or 2.3.1", code="invalid_version"
        ) from None


def parse_specifier(text: str) -> SpecifierSet:
    """``text`` as a PEP 440 version specifier set, e.g. ``>=1.0,<2``.

    Raises:
        InvalidInput: not a specifier set (code ``invalid_version``).
    """
    try:
        return SpecifierSet(text)
    except InvalidSpecifier:
        raise InvalidInput(
            f"{text[:80]!r} is not a version specifier such as '>=1.0,<2'",
            code="invalid_version",
        ) from None


def _portal_error(message: str) -> PydanticCustomError:
    # the message is complete: it is shown after the field's name as it stands
    return PydanticCustomError("portal", message)


def _check_name(value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise _portal_error(NAME_RULE)
    return value


def _check_version(value: str) -> str:
    if len(value) > MAX_VERSION_CHARS:
        raise _portal_error(f"must be at most {MAX_VERSION_CHARS} characters")
    try:
        # stored normalised, so that "v1.0-beta1" and "1.0b1" are one version
        return str(Version(value))
    except InvalidVersion:
        raise _portal_error("must be a version such as 1.0 or 2.3.1 (PEP 440)") from None


def _check_specifier(value: str) -> str:
    if len(value) > MAX_SPECIFIER_CHARS:
        raise _portal_error(f"must be at most {MAX_SPECIFIER_CHARS} characters")
    try:
        specifiers = SpecifierSet(value)
    except InvalidSpecifier:
        raise _portal_error("must be a version specifier such as '>=1.0,<2'") from None
    if not str(specifiers):
        raise _portal_error("must be a version specifier such as '>=1.0' (not empty)")
    return value


def _check_format(value: int) -> int:
    if value != MANIFEST_FORMAT:
        raise _portal_error(f"must be {MANIFEST_FORMAT}")
    return value


def _check_path(value: str) -> str:
    try:
        return check_entry_name(value)
    except ArchiveError:
        raise _portal_error("must be the relative path of a file in the bundle") from None


def _check_argument(value: str) -> str:
    if "\0" in value:
        raise _portal_error("must not contain NUL characters")
    return value


Name = Annotated[str, AfterValidator(_check_name)]
VersionText = Annotated[str, AfterValidator(_check_version)]
SpecifierText = Annotated[str, AfterValidator(_check_specifier)]
FormatNumber = Annotated[int, AfterValidator(_check_format)]
Argument = Annotated[str, Field(max_length=1024), AfterValidator(_check_argument)]
Description = Annotated[str, Field(max_length=2000)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RuntimeManifest(_Strict):
    """``runtime.json``: what a runtime package provides."""

    format: FormatNumber
    name: Name
    version: VersionText
    python: SpecifierText
    description: Description = ""


class RuntimeRequirement(_Strict):
    """The runtime an app needs: a runtime name and a version specifier set."""

    name: Name
    version: SpecifierText

    def allows(self, name: str, version: str) -> bool:
        """Whether runtime ``name`` ``version`` meets this requirement.

        Pre-releases match only if the specifier names one (PEP 440's default).
        """
        try:
            parsed = Version(version)
        except InvalidVersion:
            return False
        specifiers = SpecifierSet(self.version)
        # packaging would let a lone pre-release through; PEP 440 says only if asked for
        allow_pre = bool(specifiers.prereleases)
        return name == self.name and specifiers.contains(parsed, prereleases=allow_pre)


class Command(_Strict):
    """A command as an argument list (no shell), run in the bundle's folder."""

    command: Annotated[list[Argument], Field(min_length=1, max_length=64)]


class Procedure(Command):
    """A named solve procedure."""

    description: Description = ""


class Resources(_Strict):
    """Resource hints for the app's sessions; None where the portal's default applies."""

    cpu: Annotated[float, Field(ge=0.1, le=64, allow_inf_nan=False)] | None = None
    memory_mb: Annotated[int, Field(ge=64, le=262_144)] | None = None
    time_limit_s: Annotated[int, Field(ge=1, le=604_800)] | None = None


class AppManifest(_Strict):
    """``app.json``: one release of an app."""

    format: FormatNumber
    name: Name
    version: VersionText
    title: Annotated[str, Field(min_length=1, max_length=80)] = ""
    description: Description
    category: Annotated[str, Field(max_length=40)] = ""
    icon: Annotated[str, AfterValidator(_check_path)] | None = None
    runtime: RuntimeRequirement
    webui: Command | None = None
    procedures: Annotated[dict[Name, Procedure], Field(max_length=MAX_PROCEDURES)] = {}
    resources: Resources | None = None

    @model_validator(mode="before")
    @classmethod
    def _title_defaults_to_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "title" not in data and isinstance(data.get("name"), str):
            return {**data, "title": data["name"]}
        return data


# --- parsing ---------------------------------------------------------------------------


def parse_runtime_manifest(data: bytes, *, max_bytes: int = MAX_MANIFEST_BYTES) -> RuntimeManifest:
    """Validate the bytes of a ``runtime.json``.

    Raises:
        InvalidInput: code ``invalid_manifest``; the message lists every problem.
    """
    return _parse(RuntimeManifest, "runtime.json", data, max_bytes)


def parse_app_manifest(data: bytes, *, max_bytes: int = MAX_MANIFEST_BYTES) -> AppManifest:
    """Validate the bytes of an ``app.json``.

    Raises:
        InvalidInput: code ``invalid_manifest``; the message lists every problem.
    """
    return _parse(AppManifest, "app.json", data, max_bytes)


_M = TypeVar("_M", bound=BaseModel)


class ManifestError(InvalidInput):
    """A manifest is missing, unreadable or breaks the rules; ``problems`` lists how."""

    code = "invalid_manifest"

    def __init__(self, file_name: str, problems: list[str]) -> None:
        super().__init__(f"{file_name}: {'; '.join(problems)}")
        self.problems = problems


def _parse(model: type[_M], file_name: str, data: bytes, max_bytes: int) -> _M:
    if len(data) > max_bytes:
        raise ManifestError(file_name, [f"larger than {human_size(max_bytes)}"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(file_name, ["not UTF-8 text"]) from None
    try:
        document = json.loads(
            text, object_pairs_hook=_refuse_duplicate_keys, parse_constant=_refuse_constant
        )
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        raise ManifestError(file_name, [problem]) from None
    except _DuplicateKey as exc:
        raise ManifestError(file_name, [f"the field {exc.key!r} appears twice"]) from None
    except _BadConstant as exc:
        raise ManifestError(file_name, [f"{exc.word} is not a JSON number"]) from None
    except RecursionError:
        raise ManifestError(file_name, ["nested too deeply"]) from None
    if not isinstance(document, dict):
        raise ManifestError(file_name, ["must be a JSON object ({...})"])
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise ManifestError(file_name, describe_errors(exc)) from None


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _BadConstant(ValueError):
    def __init__(self, word: str) -> None:
        super().__init__(word)
        self.word = word


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of two equal keys silently: a reviewer would read the first
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _refuse_constant(word: str) -> Any:
    raise _BadConstant(word)


_TYPE_WORDS = {
    "string_type": "must be text (a JSON string)",
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "dict_type": "must be an object ({...})",
    "model_type": "must be an object ({...})",
    "list_type": "must be a list",
    "missing": "is missing",
    "extra_forbidden": "is not a known field",
    "finite_number": "must be a finite number",
}


def describe_errors(error: ValidationError) -> list[str]:
    """Each problem of a :class:`ValidationError` as ``'field.path' <what is wrong>``."""
    problems: list[str] = []
    for item in error.errors(include_url=False):
        problem = _describe(tuple(item["loc"]), item["type"], item.get("ctx") or {}, item)
        if problem not in problems:
            problems.append(problem)
    return problems


def _describe(loc: tuple[Any, ...], kind: str, ctx: dict[str, Any], item: Any) -> str:
    if loc and loc[-1] == "[key]":
        # a dict key that breaks a rule: pydantic puts the key itself before "[key]"
        name = _printable(str(loc[-2]))
        return f"{_quote(_dotted(loc[:-2]))} has the name '{name}', which {item['msg']}"
    path = _dotted(loc)
    # a command's items are reported for the command, as a publisher thinks of it
    if len(loc) >= 2 and loc[-2] == "command" and isinstance(loc[-1], int):
        if kind == "string_type":
            return f"{_quote(_dotted(loc[:-1]))} must be a list of strings"
        path = _dotted(loc[:-1])
        return f"{_quote(path)} has an argument that {_constraint(kind, ctx, item)}"
    if loc and loc[-1] == "command" and kind in ("list_type", "too_short", "too_long"):
        if kind == "list_type":
            return f"{_quote(path)} must be a list of strings"
        return f"{_quote(path)} must have 1-64 arguments"
    if not loc:
        return item["msg"]
    return f"{_quote(path)} {_constraint(kind, ctx, item)}"


def _constraint(kind: str, ctx: dict[str, Any], item: Any) -> str:
    if kind == "portal":
        return str(item["msg"])
    if kind in _TYPE_WORDS:
        return _TYPE_WORDS[kind]
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']:,} characters"
    if kind == "string_too_short":
        return "must not be empty" if ctx["min_length"] == 1 else item["msg"]
    if kind == "too_long":
        return f"must have at most {ctx['max_length']:,} items"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']:,} items"
    if kind in ("greater_than_equal", "greater_than"):
        return f"must be at least {_number(ctx.get('ge', ctx.get('gt')))}"
    if kind in ("less_than_equal", "less_than"):
        return f"must be at most {_number(ctx.get('le', ctx.get('lt')))}"
    return str(item["msg"]).lower()


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(_printable(str(part)) for part in loc)


def _printable(text: str) -> str:
    # field paths contain the publisher's procedure names: keep them short and visible
    text = text if len(text) <= 64 else text[:64] + "..."
    return text if text.isprintable() else repr(text)[1:-1]


def _quote(path: str) -> str:
    return f"'{path}'"
