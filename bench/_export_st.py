#!/usr/bin/env python3
"""bench/export.py's peer rows: sentence-transformers' own ONNX backend scoring the student's pairs, in a process of
its own so that it can run in another Python environment (`--st-python`).

Why another process: sentence-transformers' ONNX backend loads through optimum-onnx, whose releases (0.1.0 today) pin
transformers < 4.58, and kd needs transformers >= 5, so in kd's environment the import fails; an environment with
`pip install "sentence-transformers[onnx]<6"` (5.x, transformers 4.57, the same onnxruntime and torch) runs it.
This file imports neither kd nor transformers at module level, only _common (stdlib) for the CPU windows.

    python bench/_export_st.py FOLDER --variant onnx|onnx-int8 --kind cross|bi --max-length N --threads T
    stdin, one JSON line per call: {"queries": [...], "passages": [...], "batch_size": 64}
    stdout: first {"ready": true, "versions": {...}, "file": ..., "bytes": n} or {"error": "..."}, then per call
            {"scores": [...], "seconds": s, "other_share": x}

FOLDER holds the student as sentence-transformers loads it (bench/export.py: st_folder): `cross`, a BERT_CAT as an
HF BertForSequenceClassification for a CrossEncoder (scores: the raw logits, as kd's rows return); `bi`, a BERT_DOT
as a SentenceTransformer folder (scores: each distinct query and passage encoded once, then their inner products, as
kd's BertDot.predict does). `onnx`: the backend's
default (optimum exports model.onnx, fp32). `onnx-int8`: sentence_transformers.export_dynamic_quantized_onnx_model
with the "avx512_vnni" config on a CPU with those instructions, else "avx2" (optimum's ORTQuantizer, dynamic int8).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CpuWindow  # noqa: E402


def _config() -> str:
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else []
    return "avx512_vnni" if "avx512_vnni" in flags else "avx2"


def onnx_bytes(model) -> int | None:
    """The size of the .onnx file the CrossEncoder's onnxruntime session runs (optimum may export it to a temp dir)."""
    import os

    for module in model.modules():
        session = getattr(getattr(module, "model", None), "session", None)
        path = getattr(session, "_model_path", None)
        if path and os.path.isfile(path):
            return os.path.getsize(path)
    return None


def load(folder: str, variant: str, kind: str, max_length: int, threads: int):
    """(CrossEncoder / SentenceTransformer on the ONNX backend, the .onnx file it runs, versions)."""
    import onnxruntime as ort
    import sentence_transformers
    import transformers
    from sentence_transformers import CrossEncoder, SentenceTransformer

    def build(**kw):
        if kind == "bi":
            model = SentenceTransformer(folder, backend="onnx", model_kwargs=kw)
            model.max_seq_length = max_length
            return model
        return CrossEncoder(folder, backend="onnx", max_length=max_length, model_kwargs=kw)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    kwargs = {"provider": "CPUExecutionProvider", "session_options": opts}
    file = "onnx/model.onnx"
    if variant == "onnx-int8":
        from sentence_transformers import export_dynamic_quantized_onnx_model

        config = _config()
        export_dynamic_quantized_onnx_model(build(**kwargs), config, folder)
        file = f"onnx/model_qint8_{config}.onnx"
        kwargs["file_name"] = file
    model = build(**kwargs)
    versions = {"sentence_transformers": sentence_transformers.__version__, "transformers": transformers.__version__,
                "onnxruntime": ort.__version__}
    try:
        import optimum.version

        versions["optimum"] = optimum.version.__version__
    except ImportError:  # pragma: no cover - the backend imported it already
        pass
    return model, file, versions


def score(model, kind: str, queries: list, passages: list, batch_size: int, identity):
    if kind == "cross":
        return model.predict(list(zip(queries, passages)), batch_size=batch_size, show_progress_bar=False,
                             activation_fn=identity, convert_to_numpy=True)
    import numpy as np

    uq, up = list(dict.fromkeys(queries)), list(dict.fromkeys(passages))
    q = model.encode(uq, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    d = model.encode(up, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    qi, pi = {t: i for i, t in enumerate(uq)}, {t: i for i, t in enumerate(up)}
    return np.einsum("nd,nd->n", q[[qi[t] for t in queries]], d[[pi[t] for t in passages]])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--variant", choices=("onnx", "onnx-int8"), default="onnx")
    ap.add_argument("--kind", choices=("cross", "bi"), default="cross")
    ap.add_argument("--max-length", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    args = ap.parse_args()
    try:
        import torch

        torch.set_num_threads(args.threads)
        model, file, versions = load(args.folder, args.variant, args.kind, args.max_length, args.threads)
    except Exception as e:  # noqa: BLE001 - reported to the parent as the row's reason
        print(json.dumps({"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}), flush=True)
        return 1
    identity = torch.nn.Identity()
    print(json.dumps({"ready": True, "versions": versions, "file": file, "bytes": onnx_bytes(model)}), flush=True)
    for line in sys.stdin:
        call = json.loads(line)
        with torch.inference_mode(), CpuWindow() as w:
            scores = score(model, args.kind, call["queries"], call["passages"], call["batch_size"], identity)
        print(json.dumps({"scores": [float(s) for s in scores], "seconds": w.seconds,
                          "other_share": w.other_share}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
