"""Reading the training configuration: a TrainingRun manifest or its spec, from a file or the env."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubetrain_api.models import TrainingRunSpec
from pydantic import ValidationError

from . import contract
from .errors import ConfigInvalid

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class RunConfig:
    """A parsed run: the typed spec plus the identity the artifacts are filed under."""

    name: str
    namespace: str | None
    uid: str | None
    spec: TrainingRunSpec
    raw_spec: dict[str, Any]


def load_document(text: str, source: str) -> dict[str, Any]:
    """A YAML or JSON mapping (JSON is YAML, but JSON errors read better from the json module)."""
    stripped = text.lstrip()
    if not stripped:
        raise ConfigInvalid(f"{source} is empty")
    try:
        doc = json.loads(text) if stripped.startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigInvalid(f"{source} is not valid JSON/YAML: {_one_line(str(exc))}") from None
    if not isinstance(doc, dict):
        raise ConfigInvalid(f"{source} must hold a mapping (a TrainingRun or its spec), got {type(doc).__name__}")
    return doc


def parse_config(doc: dict[str, Any], name: str | None = None) -> RunConfig:
    """Validate a TrainingRun manifest or a bare spec with the typed API."""
    if "spec" in doc and isinstance(doc.get("spec"), dict):
        kind = doc.get("kind", "TrainingRun")
        if kind != "TrainingRun":
            raise ConfigInvalid(f"kind must be TrainingRun, got {kind!r}")
        metadata = doc.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ConfigInvalid("metadata must be a mapping")
        raw_spec = doc["spec"]
    else:
        metadata, raw_spec = {}, doc
    try:
        spec = TrainingRunSpec.model_validate(raw_spec)
    except ValidationError as exc:
        raise ConfigInvalid(format_validation_error(exc)) from None
    run_name = name or os.environ.get(contract.ENV_RUN_NAME) or metadata.get("name") or spec.model
    if not isinstance(run_name, str) or not _NAME_RE.match(run_name) or len(run_name) > 63:
        raise ConfigInvalid(f"run name {run_name!r} must be a DNS label (lowercase letters, digits, '-')")
    return RunConfig(
        name=run_name,
        namespace=metadata.get("namespace"),
        uid=metadata.get("uid"),
        spec=spec,
        raw_spec=raw_spec,
    )


def read_config(path: str | None, name: str | None = None) -> RunConfig:
    """The config from ``--config FILE`` or, without it, from ``$KUBETRAIN_CONFIG``."""
    if path:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigInvalid(f"cannot read config {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigInvalid(f"config {path} is not UTF-8 text") from None
        return parse_config(load_document(text, f"config {path}"), name)
    env_text = os.environ.get(contract.ENV_CONFIG)
    if not env_text:
        raise ConfigInvalid(f"no config: pass --config FILE or set {contract.ENV_CONFIG}")
    return parse_config(load_document(env_text, contract.ENV_CONFIG), name)


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:8]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__")
        msg = err.get("msg", "")
        msg = msg.removeprefix("Value error, ")
        parts.append(f"spec.{loc}: {msg}" if loc and not msg.startswith("spec.") else msg)
    more = len(exc.errors()) - 8
    if more > 0:
        parts.append(f"... and {more} more")
    return "invalid config: " + "; ".join(parts)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
