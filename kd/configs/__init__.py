"""Typed job configs (pydantic): YAML files + `--set key.path=value` overrides, validated before any Ray work.

    loader.py          load_config (YAML + --set), read_yaml, parse_overrides, set_path
    errors.py          ConfigError and error_lines: the one way a validation error becomes `field <path>: ...` lines
    schema.py          what a config class allows at a dotted path (sections, mappings, lists)
    base.py            Strict (unknown keys are errors), fingerprint, to_flat_dict
    fields.py          self-checking field types: SafeName, Metric, Alias, ExistingFile, ModelPath, TeacherPath,
                       BeirFolder; planned_context (files earlier pipeline stages write count as existing)
    catalog.py         the names the validator needs (architectures, losses, options, layer schemes), looks_local,
                       local_model_folder, resources_dir
    common.py          MLflowConfig, TextSource
    distill.py / mine.py / prepare.py / score_teachers.py / evaluate.py / sweep.py / pipeline.py: one job's config each
    search_space.py    a sweep's search space without Ray: dimensions, points checked, trial sizes
    pipeline_stages.py the pipeline's stage sections and names

Import-light: pydantic and yaml only (no torch, ray or mlflow); the names below load their module on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConfigError": "errors", "error_lines": "errors", "format_validation_error": "errors",
    "load_config": "loader", "parse_overrides": "loader", "read_yaml": "loader",
    "Strict": "base", "fingerprint": "base", "to_flat_dict": "base",
    "MLflowConfig": "common", "TextSource": "common",
    "DistillConfig": "distill", "RegistryConfig": "distill", "ValidationConfig": "distill",
    "MineTriplesConfig": "mine",
    "PrepareConfig": "prepare",
    "ScoreTeachersConfig": "score_teachers", "TeacherSpec": "score_teachers",
    "EvalConfig": "evaluate", "ModelSpec": "evaluate",
    "SweepConfig": "sweep",
    "PipelineConfig": "pipeline",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # PEP 562: a job imports only the configs it validates
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"kd.configs.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'kd.configs' has no attribute {name!r}")
