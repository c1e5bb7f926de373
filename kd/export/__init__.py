"""Export for CPU serving: a kd student → an ONNX folder (fp32 or int8) that the one model loader serves with
onnxruntime (`kd export --model … --format onnx [--quantize int8] --out DIR`; `kd.load(DIR)`, `kd rerank --model
DIR`).

    support.py      which architectures export and why the others do not; the --out check (torch-free)
    manifest.py     kd_onnx.json: architecture, options, graphs + sha256, opset, quantization, source (torch-free)
    graphs.py       each architecture's graph (torch.onnx.export) and its int8 version (quantize_dynamic)
    exporter.py     export_onnx: graph + tokenizer + manifest, checked against PyTorch, moved into place whole
    onnx_ranker.py  load_onnx_ranker: the architecture's own class with its encoder call run by onnxruntime

Core code: imports torch, transformers, onnx / onnxruntime only (no Ray, MLflow or DeepSpeed).
"""
from __future__ import annotations

from kd.export.manifest import MANIFEST_FILE, is_export_folder, read_manifest
from kd.export.support import EXPORTABLE, NOT_EXPORTABLE, ExportError, check_out_dir, export_problem


def export_onnx(*args, **kwargs):
    from kd.export.exporter import export_onnx as _export

    return _export(*args, **kwargs)


def load_onnx_ranker(*args, **kwargs):
    from kd.export.onnx_ranker import load_onnx_ranker as _load

    return _load(*args, **kwargs)


__all__ = ["EXPORTABLE", "MANIFEST_FILE", "NOT_EXPORTABLE", "ExportError", "check_out_dir", "export_onnx",
           "export_problem", "is_export_folder", "load_onnx_ranker", "read_manifest"]
