"""Which architectures `kd export --format onnx` exports, why the others are not, and the output-folder check.

Torch-free, so the CLI refuses a bad request (an architecture it cannot export, an occupied --out) before it loads
any weights.

    bert_cat      one graph  (input_ids, attention_mask[, token_type_ids]) → score [B]
    tinybert_cat  one graph  (input_ids, attention_mask[, token_type_ids]) → score [B] = softmax(z)[1]
    bert_dot      one graph  (input_ids, attention_mask[, token_type_ids]) → embedding [B, d] (pooling, projection
                  and normalisation inside), run once for queries and once for passages (same weights)
    colbert       one graph  (input_ids, attention_mask[, token_type_ids]) → token vectors [B, L, dim]; the [MASK]
                  query augmentation (tokenization) and the MaxSim (Σ_i max_j q_i·d_j) run outside the graph, in
                  the same code as the PyTorch model

Not exported:
    prettr  its speed comes from storing the passage's lower-layer states at indexing time, and kd's PreTTR offsets
            the passage position ids by the batch's padded query length, so those states depend on the query batch.
            One pair graph would be BERT_CAT's cost under PreTTR's name, and there is no store of precomputed states
            to serve from; serve it with PyTorch (kd.load) or distil a BERT_CAT.
    tk      not implemented: TK builds its sinusoidal position table per batch length with in-place slice writes and
            special-cases an all-empty batch, which a traced graph would freeze or lose; it has no transformer body
            worth int8 (2 small layers), and PyTorch already serves it as kd's cheapest student.
    hf_cross_encoder, ensemble: not students (a teacher cross-encoder / a teacher ensemble with BM25 members).
"""
from __future__ import annotations

from pathlib import Path

EXPORTABLE = ("bert_cat", "bert_dot", "colbert", "tinybert_cat")
FORMATS = ("onnx",)
QUANTIZATIONS = ("int8",)

NOT_EXPORTABLE = {
    "prettr": "PreTTR's speed comes from storing each passage's lower-layer states at indexing time, and kd's PreTTR "
              "offsets the passage position ids by the batch's padded query length, so those states depend on the "
              "query batch; a single pair graph would cost what BERT_CAT costs. Serve it with PyTorch (kd.load), or "
              "distil a bert_cat / colbert student to export",
    "tk": "exporting TK is not implemented: it builds its sinusoidal position table per batch length with in-place "
          "slice writes and special-cases an all-empty batch, which a traced graph would freeze; serve it with "
          "PyTorch (kd.load), it is already kd's cheapest student",
    "hf_cross_encoder": "an HF cross-encoder teacher is not a kd student; export a distilled bert_cat instead",
    "ensemble": "a teacher ensemble combines several members (BM25 among them), not one network graph",
}


class ExportError(ValueError):
    """A request `kd export` refuses before any work: an architecture it cannot export, an occupied output folder, a
    folder that is not a kd model, an unknown format or quantization."""


def export_problem(architecture: str | None) -> str | None:
    """Why a model of `architecture` cannot be exported to ONNX, or None when it can."""
    if architecture in EXPORTABLE:
        return None
    reason = NOT_EXPORTABLE.get(str(architecture))
    if reason is None:
        return f"unknown architecture {architecture!r}; exportable: {', '.join(EXPORTABLE)}"
    return f"{architecture!r} cannot be exported to ONNX: {reason}"


def check_request(fmt: str, quantize: str | None) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is not supported; supported: {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f"quantization {quantize!r} is not supported; supported: {', '.join(QUANTIZATIONS)} "
                          "(or none for fp32)")


def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    """The output folder, refused when it is a file, or a non-empty folder without `overwrite`."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out} exists and is not empty; pass --overwrite to replace its contents")
    return out
