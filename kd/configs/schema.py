"""What a config class allows at a dotted path, read from its annotations: the sections (pydantic models) a field
holds, and whether it is a free-form mapping or a list. The `--set` loader and the sweep's search-space keys walk
config classes with these."""
from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel


def _alternatives(annotation: Any) -> tuple:
    """The types an annotation allows: the members of a Union / Optional, Annotated[...] unwrapped."""
    if typing.get_origin(annotation) is Annotated:
        return _alternatives(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return tuple(a for arg in typing.get_args(annotation) for a in _alternatives(arg))
    return (annotation,)


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config sections (pydantic models) an annotation allows."""
    return [a for a in _alternatives(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]


def container_of(annotation: Any) -> tuple[str, Any] | None:
    """("dict", value type) for a mapping field, ("list", item type) for a list field, else None."""
    for a in _alternatives(annotation):
        origin, args = typing.get_origin(a) or a, typing.get_args(a)
        if origin is dict:
            return "dict", args[1] if len(args) == 2 else Any
        if origin is list:
            return "list", args[0] if args else Any
    return None


def field_annotation(schema: Any, key: str) -> Any:
    """The annotation of field `key` (its name or YAML alias) of the section(s) `schema` allows, else None."""
    for model in models_in(schema):
        for name, f in model.model_fields.items():
            if key in (name, f.alias):
                return f.annotation
    return None
