"""onnxruntime's transformer graph optimizer on an exported encoder graph, before int8 quantization (and for fp32).

Why: the traced graph spells each layer out in primitive ops (MatMul, Add, Softmax, Erf, ReduceMean, …). The
optimizer (`onnxruntime.transformers.optimizer.optimize_model`, model_type "bert", num_heads / hidden_size from the
encoder's config) rewrites them into onnxruntime's fused CPU kernels — EmbedLayerNormalization, Attention (one packed
QKV projection), SkipLayerNormalization, BiasGelu — and quantize_int8 (kd/export/graphs.py) then quantizes the
Attention's packed QKV weight as well as the MatMuls (QAttention). Only the optimizer's Python fusions run
(`opt_level=0`): onnxruntime's own graph optimizations, some hardware-specific, run when a session loads the file
(kd/export/onnx_ranker.py: ORT_ENABLE_ALL), so the saved graph stays portable between CPUs.

The fusions need the attention traced in its eager form (graphs.eager_attention): the SDPA trace of transformers ≥ 5
matches none of the optimizer's attention patterns, and quantized it ran at 0.84x the eager trace (one thread, CPU
seconds, 2-layer MiniLM BERT_CAT on DL'19 pairs). Measured there, CPU s per pair relative to PyTorch fp32 = 1.00:
fp32 eager trace 1.09x, + fusions 1.14x; int8 (per channel) of the eager trace 2.44x, of the fused graph 2.40x (a tie;
the fused graph is kept, one pipeline for both); per tensor the same speed with 5x the score error (kept off).

Encoders the optimizer does not know (config.model_type outside FUSABLE) are left as traced; the manifest says so.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

FUSABLE = {"bert": "bert"}  # the encoder config's model_type → the optimizer's model_type (tested on BERT/MiniLM)


def fusion_plan(config) -> tuple[str | None, str]:
    """(the optimizer's model_type, or None, and why) for an HF encoder config."""
    model_type = getattr(config, "model_type", None)
    if model_type in FUSABLE:
        return FUSABLE[model_type], f"{model_type!r} encoder"
    return None, f"no fusions for a {model_type!r} encoder (fused: {', '.join(sorted(FUSABLE))})"


def fuse_graph(src: Path, dst: Path, config) -> dict[str, Any]:
    """Write `src` optimized into `dst` (or copied unchanged when the encoder is not fusable); returns what the
    manifest records: the optimizer's arguments and the count of each fused operator."""
    import shutil

    model_type, why = fusion_plan(config)
    if model_type is None:
        shutil.copyfile(src, dst)
        return {"method": None, "reason": why}
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = int(config.num_attention_heads), int(config.hidden_size)
    logger = logging.getLogger("onnxruntime.transformers")  # its per-fusion INFO lines
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model = optimize_model(str(src), model_type=model_type, num_heads=heads, hidden_size=hidden, opt_level=0)
        fused = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
        model.save_model_to_file(str(dst))
    finally:
        logger.setLevel(level)
    return {"method": "onnxruntime.transformers.optimizer.optimize_model", "model_type": model_type,
            "num_heads": heads, "hidden_size": hidden, "opt_level": 0, "fused": fused}
