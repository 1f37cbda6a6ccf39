"""Manifests: every field rule of docs/formats.md, strict types, and plain-word messages."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aimms_portal.errors import InvalidInput
from aimms_portal.packages.manifests import (
    AppManifest,
    ManifestError,
    RuntimeManifest,
    parse_app_manifest,
    parse_runtime_manifest,
    parse_specifier,
    parse_version,
)


def runtime_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": 1,
        "name": "highs",
        "version": "1.7.0",
        "python": ">=3.11",
        "description": "HiGHS with Python",
    }
    doc.update(changes)
    return doc


def app_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": 1,
        "name": "transport",
        "version": "2.0",
        "title": "Transport planning",
        "description": "Ship goods at the least cost.",
        "category": "Logistics",
        "icon": "assets/icon.svg",
        "runtime": {"name": "highs", "version": ">=1.7,<2"},
        "webui": {"command": ["python", "-m", "transport.webui"]},
        "procedures": {
            "solve": {"command": ["python", "-m", "transport.solve"], "description": "Solve."}
        },
        "resources": {"cpu": 2, "memory_mb": 2048, "time_limit_s": 3600},
    }
    doc.update(changes)
    return doc


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def app_problems(doc: Any) -> str:
    with pytest.raises(ManifestError) as caught:
        parse_app_manifest(encode(doc))
    assert caught.value.code == "invalid_manifest"
    assert isinstance(caught.value, InvalidInput)
    assert caught.value.message.startswith("app.json: ")
    return caught.value.message


def runtime_problems(doc: Any) -> str:
    with pytest.raises(ManifestError) as caught:
        parse_runtime_manifest(encode(doc))
    assert caught.value.message.startswith("runtime.json: ")
    return caught.value.message


# --- valid manifests -------------------------------------------------------------------


def test_valid_runtime_manifest():
    manifest = parse_runtime_manifest(encode(runtime_doc()))
    assert manifest == RuntimeManifest(
        format=1, name="highs", version="1.7.0", python=">=3.11", description="HiGHS with Python"
    )


def test_runtime_description_is_optional():
    doc = runtime_doc()
    del doc["description"]
    assert parse_runtime_manifest(encode(doc)).description == ""


def test_valid_app_manifest():
    manifest = parse_app_manifest(encode(app_doc()))
    assert isinstance(manifest, AppManifest)
    assert manifest.title == "Transport planning"
    assert manifest.runtime.name == "highs"
    assert manifest.webui is not None and manifest.webui.command[0] == "python"
    assert manifest.procedures["solve"].description == "Solve."
    assert manifest.resources is not None and manifest.resources.cpu == 2.0
    assert manifest.resources.memory_mb == 2048


def test_app_manifest_defaults():
    doc = {
        "format": 1,
        "name": "minimal",
        "version": "1",
        "description": "",
        "runtime": {"name": "highs", "version": ">=1"},
    }
    manifest = parse_app_manifest(encode(doc))
    assert manifest.title == "minimal"  # the title defaults to the name
    assert (manifest.category, manifest.icon, manifest.webui, manifest.resources) == (
        "",
        None,
        None,
        None,
    )
    assert manifest.procedures == {}


def test_versions_are_stored_normalised():
    assert parse_runtime_manifest(encode(runtime_doc(version="v1.0-Beta1"))).version == "1.0b1"
    assert parse_app_manifest(encode(app_doc(version="2.0.0"))).version == "2.0.0"


def test_text_fields_may_hold_html():
    # accepted as text: escaping is the UI's job
    script = "<script>alert(1)</script>"
    manifest = parse_app_manifest(encode(app_doc(title=script, description=script * 3)))
    assert manifest.title == script


def test_manifests_are_immutable():
    manifest = parse_app_manifest(encode(app_doc()))
    with pytest.raises(ValueError, match="frozen"):
        manifest.name = "other"


def test_resources_may_be_partial():
    manifest = parse_app_manifest(encode(app_doc(resources={"cpu": 0.5})))
    assert manifest.resources is not None
    assert (manifest.resources.cpu, manifest.resources.memory_mb) == (0.5, None)


def test_runtime_requirement_allows():
    manifest = parse_app_manifest(encode(app_doc()))
    assert manifest.runtime.allows("highs", "1.7.0")
    assert manifest.runtime.allows("highs", "1.9")
    assert not manifest.runtime.allows("highs", "2.0")
    assert not manifest.runtime.allows("highs", "1.6")
    assert not manifest.runtime.allows("other", "1.7")
    assert not manifest.runtime.allows("highs", "not a version")
    assert not manifest.runtime.allows("highs", "1.8rc1")  # no pre-releases unless named
    pre = parse_app_manifest(encode(app_doc(runtime={"name": "highs", "version": ">=2.0rc1"})))
    assert pre.runtime.allows("highs", "2.0rc2")


# --- strict types ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"format": "1"}, "'format' must be a whole number"),
        ({"format": True}, "'format' must be a whole number"),
        ({"format": 1.0}, "'format' must be a whole number"),
        ({"format": 2}, "'format' must be 1"),
        ({"name": 7}, "'name' must be text"),
        ({"version": 2.0}, "'version' must be text"),
        ({"title": ["a"]}, "'title' must be text"),
        ({"description": None}, "'description' must be text"),
        ({"runtime": "highs>=1"}, "'runtime' must be an object"),
        ({"runtime": {"name": "highs", "version": 1}}, "'runtime.version' must be text"),
        ({"webui": {"command": "python app.py"}}, "'webui.command' must be a list of strings"),
        ({"webui": ["python"]}, "'webui' must be an object"),
        (
            {"procedures": {"solve": {"command": ["python", 3]}}},
            "'procedures.solve.command' must be a list of strings",
        ),
        ({"procedures": []}, "'procedures' must be an object"),
        ({"resources": {"cpu": "2"}}, "'resources.cpu' must be a number"),
        ({"resources": {"cpu": True}}, "'resources.cpu' must be a number"),
        ({"resources": {"memory_mb": "512"}}, "'resources.memory_mb' must be a whole number"),
        ({"resources": {"memory_mb": 512.0}}, "'resources.memory_mb' must be a whole number"),
        ({"resources": {"time_limit_s": False}}, "'resources.time_limit_s' must be a whole number"),
        ({"icon": 5}, "'icon' must be text"),
    ],
)
def test_no_type_is_converted(changes: dict[str, Any], problem: str):
    assert problem in app_problems(app_doc(**changes))


def test_runtime_manifest_types():
    message = runtime_problems(runtime_doc(format="1", python=3.11, description=["x"]))
    assert "'format' must be a whole number" in message
    assert "'python' must be text" in message
    assert "'description' must be text" in message


# --- field rules -----------------------------------------------------------------------

NAME_RULE = "must be 2-64 characters of a-z, 0-9"


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "Transport",
        "-x",
        ".x",
        "x y",
        "x/y",
        "<script>alert(1)</script>",
        "x" * 65,
        "",
        "\u00e9t\u00e9",
    ],
)
def test_name_rule(name: str):
    assert f"'name' {NAME_RULE}" in app_problems(app_doc(name=name))
    assert f"'name' {NAME_RULE}" in runtime_problems(runtime_doc(name=name))
    assert f"'runtime.name' {NAME_RULE}" in app_problems(
        app_doc(runtime={"name": name, "version": ">=1"})
    )


@pytest.mark.parametrize("name", ["ab", "x" * 64, "0day", "a.b_c-d", "9" + "9"])
def test_name_rule_accepts(name: str):
    assert parse_app_manifest(encode(app_doc(name=name))).name == name


@pytest.mark.parametrize("version", ["one", "1.0.0.0-x-y", "", "1.0 beta", "x" * 65])
def test_version_rule(version: str):
    assert "'version' must be" in app_problems(app_doc(version=version))


@pytest.mark.parametrize("specifier", ["", "1.0", "=>1", ">=1.0;", "latest", ">" + "1" * 200])
def test_specifier_rule(specifier: str):
    problems = app_problems(app_doc(runtime={"name": "highs", "version": specifier}))
    assert "'runtime.version' must be" in problems
    assert "'python' must be" in runtime_problems(runtime_doc(python=specifier))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"title": ""}, "'title' must not be empty"),
        ({"title": "t" * 81}, "'title' must be at most 80 characters"),
        ({"description": "d" * 2001}, "'description' must be at most 2,000 characters"),
        ({"category": "c" * 41}, "'category' must be at most 40 characters"),
        ({"icon": "../icon.png"}, "'icon' must be the relative path of a file"),
        ({"icon": "/etc/icon.png"}, "'icon' must be the relative path of a file"),
        ({"icon": ""}, "'icon' must be the relative path of a file"),
        ({"webui": {"command": []}}, "'webui.command' must have 1-64 arguments"),
        ({"webui": {"command": ["x"] * 65}}, "'webui.command' must have 1-64 arguments"),
        (
            {"webui": {"command": ["x" * 1025]}},
            "'webui.command' has an argument that must be at most 1,024 characters",
        ),
        (
            {"webui": {"command": ["a\0b"]}},
            "'webui.command' has an argument that must not contain NUL",
        ),
        ({"webui": {"command": ["x"], "shell": True}}, "'webui.shell' is not a known field"),
        (
            {"procedures": {"Solve": {"command": ["x"]}}},
            "'procedures' has the name 'Solve', which must be 2-64",
        ),
        (
            {"procedures": {f"p{i:02d}": {"command": ["x"]} for i in range(51)}},
            "'procedures' must have at most 50 items",
        ),
        (
            {"procedures": {"solve": {"command": ["x"], "description": "d" * 2001}}},
            "'procedures.solve.description' must be at most 2,000",
        ),
        ({"resources": {"cpu": 0.05}}, "'resources.cpu' must be at least 0.1"),
        ({"resources": {"cpu": 65}}, "'resources.cpu' must be at most 64"),
        ({"resources": {"memory_mb": 63}}, "'resources.memory_mb' must be at least 64"),
        ({"resources": {"memory_mb": 262_145}}, "'resources.memory_mb' must be at most 262,144"),
        ({"resources": {"time_limit_s": 0}}, "'resources.time_limit_s' must be at least 1"),
        (
            {"resources": {"time_limit_s": 604_801}},
            "'resources.time_limit_s' must be at most 604,800",
        ),
        ({"resources": {"gpus": 1}}, "'resources.gpus' is not a known field"),
        ({"homepage": "https://x"}, "'homepage' is not a known field"),
    ],
)
def test_field_rules(changes: dict[str, Any], problem: str):
    assert problem in app_problems(app_doc(**changes))


def test_limits_are_inclusive():
    doc = app_doc(
        title="t" * 80,
        description="d" * 2000,
        category="c" * 40,
        webui={"command": ["x" * 1024] + ["y"] * 63},
        procedures={f"p{i:02d}": {"command": ["x"]} for i in range(50)},
        resources={"cpu": 64, "memory_mb": 64, "time_limit_s": 604_800},
    )
    assert len(parse_app_manifest(encode(doc)).procedures) == 50


def test_unknown_runtime_field_is_refused():
    assert "'requires' is not a known field" in runtime_problems(runtime_doc(requires=["x"]))


# --- every problem at once -------------------------------------------------------------


def test_missing_fields_are_all_named():
    message = app_problems({"format": 1, "name": "x1"})
    assert message == (
        "app.json: 'version' is missing; 'description' is missing; 'runtime' is missing"
    )
    assert runtime_problems({}) == (
        "runtime.json: 'format' is missing; 'name' is missing; 'version' is missing; "
        "'python' is missing"
    )


def test_names_in_messages_are_printable_and_short():
    procedures = {"a\nb": {"command": ["x"]}, "p" * 100: {"command": "x"}}
    message = app_problems(app_doc(procedures=procedures))
    assert "'procedures' has the name 'a\\nb', which must be 2-64" in message
    assert f"'procedures.{'p' * 64}....command' must be a list of strings" in message
    assert "\n" not in message


def test_every_problem_is_listed_once():
    doc = app_doc(
        version="one",
        title=3,
        procedures={"solve": {"command": "python solve.py"}, "run": {"command": [1, 2]}},
        extra=True,
    )
    with pytest.raises(ManifestError) as caught:
        parse_app_manifest(encode(doc))
    assert caught.value.problems == [
        "'version' must be a version such as 1.0 or 2.3.1 (PEP 440)",
        "'title' must be text (a JSON string)",
        "'procedures.solve.command' must be a list of strings",
        "'procedures.run.command' must be a list of strings",
        "'extra' is not a known field",
    ]


# --- documents that are no manifest ----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "not valid JSON (line 1, column 1"),
        (b'{"format": 1,', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8 text"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b'{"format": 1, "format": 1}', "the field 'format' appears twice"),
        (b'{"cpu": NaN}', "NaN is not a JSON number"),
        (b'{"cpu": -Infinity}', "-Infinity is not a JSON number"),
        (b"[" * 60_000 + b"]" * 60_000, "larger than 64 KiB"),
        (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
        (b"{}" + b" " * (64 * 1024), "larger than 64 KiB"),
    ],
)
def test_unreadable_documents(data: bytes, problem: str):
    with pytest.raises(ManifestError) as caught:
        parse_app_manifest(data)
    assert problem in caught.value.message


def test_the_size_limit_is_the_callers():
    data = encode(runtime_doc())
    with pytest.raises(ManifestError, match="larger than 100 bytes"):
        parse_runtime_manifest(data, max_bytes=100)
    assert parse_runtime_manifest(data, max_bytes=len(data)).name == "highs"


# --- helpers ---------------------------------------------------------------------------


def test_parse_version_and_specifier():
    assert str(parse_version("1.0.post1")) == "1.0.post1"
    assert parse_specifier(">=1,<2").contains("1.5")
    with pytest.raises(InvalidInput) as caught:
        parse_version("latest")
    assert caught.value.code == "invalid_version"
    with pytest.raises(InvalidInput):
        parse_specifier("~~1")
