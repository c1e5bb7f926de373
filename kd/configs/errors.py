"""The one config error and the one way a pydantic ValidationError becomes its lines.

Every line names the field by its dotted path, `field students.0.loss.name: unknown loss 'nope'`. A config composed
inside another (a pipeline's stage, a sweep's `base`) reports its errors under the outer field: `prefix` is put in
front of every path, also of the paths that cross-field checks already wrote into their messages.
"""
from __future__ import annotations

from pydantic import ValidationError


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and field."""


def error_lines(err: Exception, prefix: str | None = None) -> list[str]:
    """`err`'s problems, one `field <path>: <message>` line each, the paths under `prefix` when given.

    A field's error reads `field <prefix>.<loc>: msg`. A cross-field check (a model validator: no location) already
    names its fields, one per line (`field x: ...`): those become `field <prefix>.x: ...`, and a line naming no
    field `<prefix>: line`. Any other exception is one line, `<prefix>: err`.
    """
    if not isinstance(err, ValidationError):
        return [f"{prefix}: {err}" if prefix else str(err)]
    lines: list[str] = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["loc"]:
            path = ".".join(str(p) for p in e["loc"])
            lines.append(f"field {prefix + '.' if prefix else ''}{path}: {msg}")
        else:
            lines.extend(_under(prefix, line) for line in msg.splitlines())
    return lines


def _under(prefix: str | None, line: str) -> str:
    if prefix is None:
        return line
    if line.startswith("field "):
        return f"field {prefix}.{line.removeprefix('field ')}"
    return f"{prefix}: {line}"


def format_validation_error(err: ValidationError, source: str) -> str:
    """`<source>: invalid config` and the error lines, indented: what ConfigError says about a config file."""
    return "\n".join([f"{source}: invalid config", *(f"  {line}" for line in error_lines(err))])
