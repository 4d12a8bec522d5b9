"""Typed pipeline configuration: YAML presets + dotted overrides -> a validated, frozen `PipelineConfig`.

    cfg = conf.load("toy", ["stage1.lr=1e-4", "evaluation.nfe_list=[1,4,16]"])

Presets live in `conf/presets/<name>.yaml` (or pass a path to a YAML file) and hold only the values
that differ from the schema defaults. Overrides are `dotted.key=value` with YAML-parsed values. Any
unknown key or invalid value raises `ConfigError` naming the field and the value, before any compute.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from conf.schema import PipelineConfig

__all__ = ["ConfigError", "PipelineConfig", "available_presets", "config_hash", "load"]

PRESETS_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A preset or override that does not fit the schema; the message names the field and the value."""


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load(preset: str = "toy", overrides: Sequence[str] = ()) -> PipelineConfig:
    """Resolve a preset name (or YAML path) plus overrides into a validated PipelineConfig."""
    data = _read_yaml(_preset_path(preset))
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
    return validate(data, source=f"preset {preset!r}" + (f" with overrides {list(overrides)}" if overrides else ""))


def validate(data: dict[str, Any], source: str = "config") -> PipelineConfig:
    """Validate `data` laid over the schema defaults: a partial nested section (`stage1.lora: {rank: 8}`)
    changes only the keys it names and keeps the section's own defaults for the rest."""
    try:
        return PipelineConfig.model_validate(_deep_merge(PipelineConfig().model_dump(mode="json"), data))
    except ValidationError as err:
        raise ConfigError(f"invalid {source}:\n" + _describe(err)) from None


def parse_override(item: str) -> tuple[str, Any]:
    """'stage1.lr=1e-4' -> ('stage1.lr', 1e-4); the value is parsed as YAML ('[1,2]' is a list)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value {raw!r} is not valid YAML ({err})") from None
    return key.strip(), value


def to_yaml(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def from_yaml(text: str) -> PipelineConfig:
    return validate(yaml.safe_load(text), source="YAML config")


def config_hash(section: Any) -> str:
    """Stable sha256 of a config (sub)section's canonical JSON: the cache key's config part."""
    dumped = section.model_dump(mode="json") if hasattr(section, "model_dump") else section
    return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()


# --- internals ------------------------------------------------------------------------------------
def _preset_path(preset: str) -> Path:
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"preset file {path} does not exist")
        return path
    path = PRESETS_DIR / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {preset!r}; available: {', '.join(available_presets())}")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"preset {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must be a mapping at the top level, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set data[a][b][c] = value for key 'a.b.c', creating intermediate mappings; the schema validates the
    path afterwards, so an unknown key is reported with its full dotted name."""
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parents[:i + 1])} is a value, not a section")
        node = child
    node[leaf] = value


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            lines.append(f"  {field}: unknown key{shown}")
        else:
            lines.append(f"  {field}: {e['msg']}{shown}")
    return "\n".join(lines)
