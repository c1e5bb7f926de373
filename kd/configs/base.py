"""The base of every config section, and what is derived from a validated config: its flat params and its digest."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors (a misspelt field must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def fingerprint(obj: Any) -> str:
    """sha256 of `obj`'s canonical JSON (sorted keys; non-JSON values as str), 16 hex digits: what a resumed run,
    sweep or evaluation result compares with what produced it."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def to_flat_dict(model: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Flatten a config into dotted keys (MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in model.model_dump(mode="json").items():
        _flatten(out, f"{prefix}{key}", value)
    return out


def _flatten(out: dict, key: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(out, f"{key}.{k}", v)
    else:
        out[key] = value
