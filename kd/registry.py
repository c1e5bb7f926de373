"""`kd.registry`, kept for its callers: the names now live in kd/runtime/registry.py (finding, fetching and
publishing registry models, `load` behind `kd.load`) and kd/loaded.py (what `kd.load` returns). This module imports
no MLflow; neither does kd/runtime/registry.py until a registry URI is used."""
from kd.loaded import DUAL_ENCODERS, LoadedRanker, ModelRef, NotADualEncoder
from kd.runtime.registry import (MODEL_URI_PREFIXES, RegistryError, fetch, is_model_uri, load, parse_models_uri,
                                 resolve)

__all__ = ["DUAL_ENCODERS", "LoadedRanker", "ModelRef", "NotADualEncoder", "MODEL_URI_PREFIXES", "RegistryError",
           "fetch", "is_model_uri", "load", "parse_models_uri", "resolve"]
