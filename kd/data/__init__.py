"""Data formats (kd.data.formats), id -> text lookups (kd.data.texts) and joins (kd.data.join),
triple mining (kd.data.mining) and a BM25 first stage (kd.data.bm25).

Plain Python / numpy / pyarrow / bm25s: nothing here imports ray, mlflow or deepspeed.
The BM25 module (bm25s, PyStemmer) is imported lazily on first use of its names.
"""

from __future__ import annotations

from typing import Any

from kd.data import formats, join, mining
from kd.data.formats import *  # noqa: F403  (every format's names: one list, kd.data.formats.__all__)
from kd.data.join import *  # noqa: F403  (joins, and the id -> text lookups of kd.data.texts)
from kd.data.mining import *  # noqa: F403

_LAZY = {"BM25Index", "bm25_search", "bm25_beir"}


def __getattr__(name: str) -> Any:  # PEP 562: keep bm25s out of `import kd.data`
    if name in _LAZY:
        from kd.data import bm25

        return getattr(bm25, name)
    raise AttributeError(f"module 'kd.data' has no attribute {name!r}")


__all__ = sorted({*formats.__all__, *join.__all__, *mining.__all__, *_LAZY})
