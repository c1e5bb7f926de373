"""The one model loader: a model argument → an eval-mode Ranker (evaluation, teachers, `kd.load`, the `kd` CLI).

A model argument is, in the order it is tried:

* a registry URI (`models:/<name>@<alias>`, `models:/<name>/<version>`, `runs:/<id>/…`): turned into a local folder
  by the caller's `resolve_uri` (kd.runtime.registry.fetch, kd.runtime.pyfunc.download_ranker_folder) — this module
  imports no MLflow;
* a teacher-ensemble folder (kd_ensemble.json, kd.teachers.save_ensemble) for `kind="any"`:
  `kd.teachers.load_ensemble`, which scores (query, passage) pairs with its combined score;
* a saved kd folder (kd_config.json): any architecture (`load_model`); a teacher kind must find its kind there
  (`cross`: not a dual encoder, `bi`: a bert_dot);
* an ONNX export (kd_onnx.json, `kd export`): kd.export.load_onnx_ranker, the architecture's own class with its
  encoder run by onnxruntime (same interface, CPU only), kind-checked as a kd folder is;
* otherwise an HF / sentence-transformers name or folder, built by `kind`:

    any    a BERT_DOT bi-encoder used as sentence-transformers uses it: pooling and normalisation read from the
           folder, queries and passages truncated at its `max_seq_length` (all-MiniLM-L6-v2: 256) unless `options`
           say otherwise — what evaluation, `kd.load` and the CLI score with;
    bi     a BERT_DOT bi-encoder with kd's own length defaults (a bi-encoder teacher, as distillation has used it);
    cross  an HF sequence-classification cross-encoder truncating pairs at `max_length` (a cross-encoder teacher).

BM25 members are built from a corpus, not loaded from a path: kd.teachers.load_member. New students (random heads
on a pretrained backbone) are `kd.models.build_student`.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from kd.configs.catalog import MODEL_URI_PREFIXES, is_model_uri
from kd.eval_models import ENSEMBLE_FILE, KD_CONFIG_FILE
from kd.export.manifest import MANIFEST_FILE as EXPORT_MANIFEST
from kd.models.base import Ranker
from kd.models.bert_dot import BertDot
from kd.models.hf_cross_encoder import HFCrossEncoder

logger = logging.getLogger(__name__)

KINDS = ("any", "bi", "cross")


def pick_device(device: str | None = "auto") -> torch.device:
    """`auto` (or None) → cuda when torch sees a GPU, else cpu; `cuda` without a GPU is an error, not a silent CPU
    run."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for but torch sees no GPU")
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def sentence_transformers_max_length(path: str | Path) -> int | None:
    """`max_seq_length` declared by a sentence-transformers folder (all-MiniLM-L6-v2: 256), else None."""
    from kd.models import backbone as bb

    try:
        folder = Path(bb.resolve(path))
    except FileNotFoundError:
        return None
    cfg = folder / "sentence_bert_config.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get("max_seq_length")


def load_model(folder: str | Path) -> Ranker:
    """Load any saved kd model folder (the architecture is read from its kd_config.json)."""
    return Ranker.from_pretrained(folder)


def _kd_folder_model(name_or_path: str | Path, folder: Path, kind: str) -> Ranker:
    """A saved kd folder or an ONNX export of one, checked against a teacher kind."""
    if (folder / EXPORT_MANIFEST).is_file():
        from kd.export import load_onnx_ranker

        model = load_onnx_ranker(folder)
    else:
        model = load_model(folder)
    if kind == "cross" and model.dual_encoder:
        raise ValueError(f"{name_or_path} holds a {model.architecture!r} dual encoder, not a cross-encoder")
    if kind == "bi" and not isinstance(model, BertDot):
        raise ValueError(f"{name_or_path} holds a {model.architecture!r} model, not a bi-encoder (bert_dot)")
    return model


def _hub_model(name_or_path: str | Path | None, kind: str, options: Mapping[str, Any] | None,
               max_length: int) -> Ranker:
    """An HF / sentence-transformers name or folder (None: the default backbone) built as `kind` says."""
    if kind == "cross":
        return HFCrossEncoder.from_backbone(name_or_path, max_length=max_length)
    opts = dict(options or {})
    if kind == "any":
        from kd.models import backbone as bb

        declared = sentence_transformers_max_length(name_or_path or bb.default_backbone())
        if declared:  # sentence-transformers truncates queries and documents alike at max_seq_length
            opts.setdefault("max_query_length", int(declared))
            opts.setdefault("max_passage_length", int(declared))
    return BertDot.from_backbone(name_or_path, **opts)


def load_ranker(
    path: str | Path | None,
    *,
    kind: str = "any",
    options: Mapping[str, Any] | None = None,
    layers: str | Sequence[int] | None = None,
    num_layers: int | None = None,
    resolve_uri: Callable[[str], Path] | None = None,
    max_length: int = 512,
) -> Ranker:
    """A model argument → an eval-mode Ranker (see the module docstring for what `path` may be and `kind`).

    `options`: BertDot options for an HF / sentence-transformers encoder (ignored, with a warning, for a saved kd
    folder or an ensemble). `layers` keeps a layer subset (kd.init.layer_subset_student: a scheme with
    `num_layers`, or an index list). `max_length`: the pair length of an HF cross-encoder (`kind="cross"`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    given = path
    if path is not None and is_model_uri(str(path)):
        if resolve_uri is None:
            raise ValueError(f"{path}: an MLflow model URI needs resolve_uri "
                             "(kd.runtime.pyfunc.download_ranker_folder)")
        path = str(resolve_uri(str(path)))
    folder = Path(str(path)).expanduser() if path is not None else None
    if kind == "any" and folder is not None and (folder / ENSEMBLE_FILE).is_file():
        if layers is not None:
            raise ValueError(f"{path} is a teacher ensemble: `layers` keeps a layer subset of one encoder, not of "
                             "an ensemble")
        if options:
            logger.warning("%s is a teacher ensemble: options %s (for HF encoders) are ignored", path, sorted(options))
        from kd.teachers import load_ensemble

        model = load_ensemble(folder)
    elif folder is not None and any((folder / f).is_file() for f in (KD_CONFIG_FILE, EXPORT_MANIFEST)):
        if options:
            logger.warning("%s is a saved kd model: options %s (for HF encoders) are ignored", path, sorted(options))
        if layers is not None and (folder / EXPORT_MANIFEST).is_file():
            raise ValueError(f"{path} is an ONNX export: `layers` keeps a layer subset of a PyTorch model; take the "
                             "subset before exporting")
        model = _kd_folder_model(given, folder, kind)
    else:
        model = _hub_model(str(path) if path is not None else None, kind, options, max_length)
    if layers is not None:
        from kd.init import layer_subset_student

        model = layer_subset_student(model, layers if isinstance(layers, str) else list(layers), num_layers)
    model.eval()
    return model


def load_spec(spec: Mapping[str, Any], resolve_uri: Callable[[str], Path] | None = None,
              device: torch.device | None = None) -> Ranker:
    """A model spec (an eval config's `models` entry as a dict: path, options, layers, num_layers) → a Ranker on
    `device`."""
    model = load_ranker(spec["path"], options=spec.get("options") or None, layers=spec.get("layers"),
                        num_layers=spec.get("num_layers"), resolve_uri=resolve_uri)
    return model.to(device) if device is not None else model


__all__ = ["KINDS", "MODEL_URI_PREFIXES", "is_model_uri", "load_model", "load_ranker", "load_spec", "pick_device",
           "sentence_transformers_max_length"]
