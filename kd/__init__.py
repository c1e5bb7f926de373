"""kd: distilling neural rankers at cluster scale. `kd.load(uri)` finds a ranker by registry URI, folder or name.

Import-light: `import kd` (and kd.configs) pulls in neither torch nor MLflow; `kd.load` imports them on first use.
"""
from __future__ import annotations

from typing import Any

__all__ = ["load"]


def __getattr__(name: str) -> Any:  # PEP 562: lazy, so `import kd.configs` stays fast
    if name == "load":
        from kd.runtime.registry import load

        return load
    raise AttributeError(f"module 'kd' has no attribute {name!r}")
