"""The manifest of an exported folder, `kd_onnx.json`: what makes the folder self-describing (torch-free).

    {"format": "kd-onnx", "format_version": 1,
     "architecture": "bert_cat", "options": {...the model's kd options: max lengths, pooling, normalize, ...},
     "graphs": {"model": {"file": "model.onnx", "sha256": "...", "bytes": n, "inputs": [...], "outputs": [...]}},
     "opset": 17, "exporter": "torchscript",
     "quantization": null | {"method": "dynamic", "weights": "int8", "per_channel": true, "op_types": [...]},
     "source": {"model": the --model argument, "ref": where it pointed (kd.loaded.ModelRef), "parameters": n, ...},
     "versions": {"torch": ..., "onnx": ..., "onnxruntime": ...}, "created": ISO time}

The tokenizer files lie beside it (the tokenizer's own save_pretrained). A loader checks every graph's sha256 against
the manifest before it builds a session, so a truncated or swapped .onnx file is an error, not wrong scores.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kd.teachers.checks import sha256_file

MANIFEST_FILE = "kd_onnx.json"
FORMAT = "kd-onnx"
FORMAT_VERSION = 1


sha256 = sha256_file  # the project's one file digest (kd.teachers.checks: torch-free)


def is_export_folder(path: str | Path | None) -> bool:
    return path is not None and (Path(str(path)).expanduser() / MANIFEST_FILE).is_file()


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}, indent=2,
                               sort_keys=True, default=str) + "\n")
    return path


def read_manifest(folder: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of an exported folder; with `verify`, every graph file is checked against its sha256."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not an ONNX export (kd export)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {manifest.get('format')!r} v{manifest.get('format_version')} is not "
                         f"{FORMAT!r} v{FORMAT_VERSION}")
    for name, graph in (manifest.get("graphs") or {}).items():
        file = folder / graph["file"]
        if not file.is_file():
            raise FileNotFoundError(f"{path}: graph {name!r} file {file} is missing")
        if verify and sha256(file) != graph["sha256"]:
            raise ValueError(f"{file}: its sha256 differs from the one {path} records; the export was changed or "
                             "truncated after it was written (export it again)")
    if not manifest.get("graphs"):
        raise ValueError(f"{path} names no graphs")
    return manifest
