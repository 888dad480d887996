"""A build's YAML file plus ``key=value`` overrides -> (BuildConfig, RunOptions).

The file has up to two sections, ``config:`` (BuildConfig) and ``run:`` (RunOptions), the same
dicts a prefect.yaml deployment passes. An override's key is dotted (``rephraser.temperature``,
``run.engine.vllm.tensor_parallel_size``); the section prefix may be left out because the two
models share no field name. Values are parsed as YAML (``null``, ``0.7``, ``{train: 1}``).

Keys are checked against the models before anything is validated, so a typo is named as an unknown
key with the known ones beside it instead of a pydantic traceback; a bad value comes back as a
``BuildFileError`` naming the field and the value.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from schemas.build import BuildConfig, RunOptions
from tasks.errors import SpatialAudioCapsError

SECTIONS: dict[str, type[BaseModel]] = {"config": BuildConfig, "run": RunOptions}


class BuildFileError(SpatialAudioCapsError):
    """A build file or override that does not describe a build (unknown key, bad value)."""


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise BuildFileError(f"override {text!r} is not key=value")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise BuildFileError(f"override {text!r}: value is not YAML ({' '.join(str(exc).split())})") from exc


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (``Model`` or ``Model | None``), if any."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_mapping(annotation: Any) -> bool:
    return typing.get_origin(annotation) is dict


def resolve_key(key: str) -> list[str]:
    """The full path of a dotted key (section first), checked against the models' fields."""
    parts = key.split(".")
    if parts[0] not in SECTIONS:
        owners = [name for name, model in SECTIONS.items() if parts[0] in model.model_fields]
        if not owners:
            known = sorted(f for model in SECTIONS.values() for f in model.model_fields)
            raise BuildFileError(f"unknown key {key!r}: no build field {parts[0]!r} "
                                 f"(known: {', '.join(known)})")
        parts = [owners[0], *parts]
    model: type[BaseModel] | None = SECTIONS[parts[0]]
    for depth, part in enumerate(parts[1:], start=1):
        if model is None:
            raise BuildFileError(f"unknown key {key!r}: {'.'.join(parts[:depth])} is a value, not a section")
        field = model.model_fields.get(part)
        if field is None:
            raise BuildFileError(f"unknown key {key!r}: {model.__name__} has no field {part!r} "
                                 f"(known: {', '.join(model.model_fields)})")
        if _is_mapping(field.annotation) and depth + 1 < len(parts):
            return parts  # a dict field (augmentations): its keys are checked when validated
        model = _model_of(field.annotation)
    return parts


def _set(doc: dict[str, Any], path: list[str], value: Any) -> None:
    node = doc
    for depth, part in enumerate(path[:-1], start=1):
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise BuildFileError(f"cannot set {'.'.join(path)}: {'.'.join(path[:depth])} is {node!r}, "
                                 "not a mapping")
    node[path[-1]] = value


def _read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file's document; BuildFileError naming ``what`` when it cannot be read or parsed."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise BuildFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise BuildFileError(f"{what} {path} is not YAML: {' '.join(str(exc).split())}") from exc


def read_build_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """The file's ``config``/``run`` sections (each may be absent)."""
    doc = _read_yaml(path, "build file")
    doc = {} if doc is None else doc
    if not isinstance(doc, dict) or set(doc) - set(SECTIONS):
        extra = sorted(set(doc) - set(SECTIONS)) if isinstance(doc, dict) else type(doc).__name__
        raise BuildFileError(f"build file {path}: expected the sections config: and run:, got {extra}")
    for name, section in doc.items():
        if not isinstance(section, dict | None):
            raise BuildFileError(f"build file {path}: {name}: must be a mapping")
    return {name: dict(doc.get(name) or {}) for name in SECTIONS}


def read_scene_file(path: str | Path) -> dict[str, Any]:
    """A scene-distribution YAML (room_specs/scenes_demo.yaml): the mapping set as ``config.scenes``,
    validated with the rest of the build so a bad field is named ``config.scenes.<field>``."""
    doc = _read_yaml(path, "scene config")
    if not isinstance(doc, dict):
        raise BuildFileError(f"scene config {path}: expected a mapping of SceneConfig fields")
    return doc


def _validation_message(exc: ValidationError, section: str) -> str:
    return "; ".join(
        f"{'.'.join(map(str, (section, *e['loc'])))}: {e['msg']} (got {e['input']!r})" for e in exc.errors()
    )


def load_build(
    path: str | Path | None = None, overrides: Iterable[tuple[str, Any]] = ()
) -> tuple[BuildConfig, RunOptions]:
    """The build a file (optional) describes, with ``overrides`` (key, value) applied in order."""
    doc = read_build_file(path) if path is not None else {name: {} for name in SECTIONS}
    for name, section in doc.items():  # a file's unknown keys are named like an override's
        for key in _leaf_keys(section, SECTIONS[name]):
            resolve_key(f"{name}.{key}")
    for key, value in overrides:
        parts = resolve_key(key)
        _set(doc[parts[0]], parts[1:], value)
    models = []
    for name, model in SECTIONS.items():
        try:
            models.append(model.model_validate(doc[name]))
        except ValidationError as exc:
            raise BuildFileError(f"bad build {name}: {_validation_message(exc, name)}") from exc
    config, run = models
    return config, run  # type: ignore[return-value]


def _leaf_keys(section: dict[str, Any], model: type[BaseModel] | None, prefix: str = "") -> list[str]:
    """Dotted keys of a file section, descending only into sub-models (dict fields are values)."""
    keys = []
    for key, value in section.items():
        field = model.model_fields.get(key) if model is not None else None
        sub = _model_of(field.annotation) if field is not None else None
        if isinstance(value, dict) and sub is not None:
            keys += _leaf_keys(value, sub, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys
