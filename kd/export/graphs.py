"""Each exportable architecture as one ONNX graph, written by torch.onnx.export, and its int8 version.

The graph is the part of the model that runs on token ids; tokenization (and ColBERT's [MASK] augmentation and
MaxSim) stays in Python, in the same code the PyTorch model uses (kd/export/onnx_ranker.py):

    bert_cat, tinybert_cat   forward(input_ids, attention_mask[, token_type_ids]) → score [B]
    bert_dot                 embed(…) → embedding [B, d]   (one graph for queries and passages: same weights)
    colbert                  _vectors(…) → vectors [B, L, dim]

Exporter: torch 2.13 has two. Both export these models with dynamic batch and sequence axes and agree with PyTorch
to ~1e-7; the default here is the TorchScript tracer (`dynamo=False`, opset 17): about 3x faster to export (which
the tests feel), one self-contained .onnx file, no onnxscript dependency. It is deprecated in torch ≥ 2.9, so
`exporter="dynamo"` (torch.export → onnxscript, opset 18, needs `pip install onnxscript`) is one argument away.
The traced batch is two texts of different lengths, so the padding-mask path of the attention is what is recorded.
The encoder is traced with its eager attention (`eager_attention`, put back afterwards): onnxruntime's transformer
optimizer (kd/export/fusion.py) fuses that form, not the SDPA one.

int8 = onnxruntime.quantization.quantize_dynamic of the fused graph: the weights of every MatMul with a constant B
(the Linear layers; not the Q·Kᵀ and attention·V products, MatMulConstBOnly) and the fused Attention's packed QKV
weight as int8, per output channel by default, activations quantized on the fly per batch. Embedding tables,
LayerNorm and the heads stay fp32.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kd.models.base import Ranker, tokenize_texts

EXPORTERS = {"torchscript": 17, "dynamo": 18}  # exporter → opset
OUTPUTS = {"bert_cat": "score", "tinybert_cat": "score", "bert_dot": "embedding", "colbert": "vectors"}
GRAPH_FILE = "model.onnx"
SAMPLE_TEXTS = ("what causes a fever", "fever is the body's response to an infection, raising its temperature to "
                "fight the pathogen")


class _Graph(nn.Module):
    """The token-id → output function of one architecture, with positional inputs for the exporter."""

    def __init__(self, model: Ranker, fn: Callable):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.fn(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


def graph_function(model: Ranker) -> Callable:
    arch = model.architecture
    if arch in ("bert_cat", "tinybert_cat"):
        return model.forward
    if arch == "bert_dot":
        return model.embed
    if arch == "colbert":
        return model._vectors
    raise ValueError(f"no ONNX graph for architecture {arch!r}")


def input_names(tokenizer) -> list[str]:
    """input_ids, attention_mask and, where the tokenizer produces them (BERT, MiniLM), token_type_ids."""
    names = ["input_ids", "attention_mask"]
    return names + (["token_type_ids"] if "token_type_ids" in tokenizer.model_input_names else [])


@contextlib.contextmanager
def eager_attention(model: Ranker):
    """The model's encoder with its eager attention for the duration (when it has an attention choice)."""
    encoder = getattr(model, "encoder", None)
    config = getattr(encoder, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(encoder, "set_attn_implementation")
    if switch:
        encoder.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            encoder.set_attn_implementation(before)


def export_graph(model: Ranker, path: Path, exporter: str = "torchscript") -> dict:
    """Write `model`'s graph to `path`; returns its inputs, outputs and opset."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {sorted(EXPORTERS)}, got {exporter!r}")
    names, output = input_names(model.tokenizer), OUTPUTS[model.architecture]
    sample = tokenize_texts(model.tokenizer, SAMPLE_TEXTS, 64)
    args = tuple(sample[n] for n in names)
    graph = _Graph(model, graph_function(model)).eval()
    out_axes = {0: "batch", 1: "sequence"} if output == "vectors" else {0: "batch"}
    opset = EXPORTERS[exporter]
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), eager_attention(model):
        warnings.simplefilter("ignore")  # tracer warnings about Python-constant branches: checked by the tests
        if exporter == "torchscript":
            torch.onnx.export(graph, args, str(path), input_names=names, output_names=[output], opset_version=opset,
                              dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, output: out_axes},
                              do_constant_folding=True, dynamo=False)
        else:
            try:
                import onnxscript  # noqa: F401
            except ImportError:
                raise RuntimeError("exporter='dynamo' needs onnxscript: pip install onnxscript") from None
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
            torch.onnx.export(graph, args, str(path), input_names=names, output_names=[output], opset_version=opset,
                              dynamic_shapes={n: {0: batch, 1: seq} for n in names}, dynamo=True,
                              external_data=False, verbose=False)
    return {"inputs": names, "outputs": [output], "opset": opset}


def quantize_int8(src: Path, dst: Path, per_channel: bool = True) -> dict:
    """Dynamic int8 quantization of `src` into `dst`; returns what the manifest records."""
    import logging

    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    op_types = ["MatMul", "Attention"]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice: shape inference it does not need here
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                         op_types_to_quantize=op_types,
                         # the fused ops' outputs have no inferred type: they are fp32
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT})
    finally:
        root.setLevel(level)
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weights": "int8", "activations": "dynamic uint8",
            "per_channel": per_channel, "op_types": op_types, "matmul_const_b_only": True}
