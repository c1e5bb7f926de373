"""An unpadded forward for BERT-family encoders: pack the real tokens, run every layer on them, attend varlen.

Why. A padded batch [B, L] spends FLOPs on B·L tokens when only Σ_b len_b are real: every Linear (Q/K/V, output
projection, FFN) and LayerNorm costs 2·params FLOPs per token, padding included, and attention costs 4·L²·hidden
per row instead of 4·len_b²·hidden. Re-ranking batches mix 20-token and 250-token pairs, so padding is often a third
or more of the work even after length sorting. Packing the real tokens into one [T = Σ len_b, hidden] tensor and
attending per sequence removes that work entirely. The anchor: the Ettin-reranker benchmark on one H100 reports bf16
with unpadded flash attention at 1.7–8.3× the throughput of fp32 padded SDPA for the same MiniLM-size cross-encoder.

What is computed. Exactly the HF BERT forward (embeddings, then per layer: Q/K/V, softmax(QKᵀ·d_head^-½)V per
sequence, output projection + dropout + residual LayerNorm, FFN + dropout + residual LayerNorm), by the encoder's
own modules applied to the packed [T, hidden] tensor — all of them act per token, so only attention needs the
sequence boundaries (`cu_seqlens`, the prefix sums of the lengths). A token's position id is its column in the padded
batch, as the padded path uses. `scatter` puts the packed states back into [B, L, hidden] (zeros at padding, where
the padded path has finite values nobody reads); `first_tokens` gives h_CLS without scattering.

Which attention kernel (`attention_kernel(x)`, or forced with `kernel=`):
  flash_attn   `flash_attn.flash_attn_varlen_func` — when flash-attn is importable and Q is on CUDA in bf16/fp16
               (e.g. under `torch.autocast("cuda", dtype=torch.bfloat16)`);
  nested_sdpa  `F.scaled_dot_product_attention` on torch nested jagged tensors built from the packed tensor (no
               copy) — where torch supports it on that device and dtype (probed once per device type and dtype:
               CPU fp32/bf16 and CUDA in torch 2.13);
  loop         one `F.scaled_dot_product_attention` call per sequence — always available (the CPU reference).

Supported encoders (`unsupported_reason`): HF `model_type == "bert"` (BERT, MiniLM, all-MiniLM-L6-v2), absolute
position embeddings, no decoder / cross-attention (an HF cross-encoder: BertForSequenceClassification). Which
students use it is their `unpadded` option (`active`): "auto" (the default, and what a folder saved before the option
existed gets) = on in eval mode on CUDA when the encoder is supported, so training and CPU inference stay padded;
true = always, training included (an unsupported encoder is an error at construction); false = never.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kd.models import backbone as bb

OPTION = "unpadded"
MODES = ("auto", True, False)
KERNELS = ("flash_attn", "nested_sdpa", "loop")


# ------------------------------------------------------------------------------------------------------ the option
def check_option(value: Any) -> str | bool:
    """The `unpadded` model option: "auto", true or false (anything else is an error naming the option)."""
    if value is True or value is False or value == "auto":
        return value
    raise ValueError(f'model option {OPTION!r} must be "auto", true or false, got {value!r}')


def unsupported_reason(encoder: nn.Module) -> str | None:
    """Why the unpadded forward cannot run this encoder, or None when it can."""
    cfg = getattr(encoder, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "bert":
        return f"the encoder is {getattr(cfg, 'model_type', type(encoder).__name__)!r}, not a BERT-family 'bert' model"
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type {cfg.position_embedding_type!r} is not 'absolute'"
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        return "the encoder is a decoder or has cross-attention"
    return None


def sequence_classification_reason(model: nn.Module) -> str | None:
    """`unsupported_reason` for an HF sequence-classification model (only BertForSequenceClassification)."""
    if type(model).__name__ != "BertForSequenceClassification":
        return f"{type(model).__name__} is not a BertForSequenceClassification"
    return unsupported_reason(model.bert)


def validate(option: Any, reason: str | None) -> str | bool:
    """The checked option; true with an unsupported encoder (`reason`) is an error naming the option."""
    option = check_option(option)
    if option is True and reason is not None:
        raise ValueError(f"model option {OPTION!r} is true but {reason}")
    return option


def _exporting() -> bool:
    """Inside torch.onnx.export (TorchScript tracer or dynamo) or torch.export / torch.compile tracing."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def active(option: Any, reason: str | None, module: nn.Module) -> bool:
    """Whether `module`'s forward runs unpadded now. true: always; "auto": in eval mode on CUDA (training and CPU
    stay padded); false, an unsupported encoder, or an export / compile trace (the packing is data-dependent): never."""
    if option is False or reason is not None or _exporting():
        return False
    if option is True:
        return True
    return not module.training and next(module.parameters()).is_cuda


# -------------------------------------------------------------------------------------------------------- packing
@dataclass
class Packing:
    """Where the real tokens of a padded [batch, length] batch are: flat `indices` (row-major), `cu_seqlens` [B + 1]
    (int32 prefix sums of the lengths, the varlen kernels' boundaries), the longest length and the padded shape."""

    indices: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    batch: int
    length: int


def pack(attention_mask: torch.Tensor) -> Packing:
    """Packing of a [B, L] 1/0 mask (host syncs: the token count, and the shortest and longest lengths — flash-attn
    needs the longest as an int)."""
    mask = attention_mask.bool()
    lengths = mask.sum(1, dtype=torch.int32)
    cu = torch.zeros(mask.shape[0] + 1, dtype=torch.int32, device=mask.device)
    cu[1:] = lengths.cumsum(0, dtype=torch.int32)
    indices = torch.nonzero(mask.flatten(), as_tuple=True)[0]
    shortest, max_len = torch.stack(torch.aminmax(lengths)).tolist() if lengths.numel() else (1, 0)
    if shortest == 0:
        raise ValueError("unpadded forward: a row of the batch has no tokens (attention_mask all 0)")
    return Packing(indices, cu, max_len, mask.shape[0], mask.shape[1])


def scatter(packed: torch.Tensor, p: Packing) -> torch.Tensor:
    """[T, ...] packed states → [B, L, ...] with zeros at padded positions."""
    out = packed.new_zeros((p.batch * p.length, *packed.shape[1:]))
    out[p.indices] = packed
    return out.view(p.batch, p.length, *packed.shape[1:])


def first_tokens(packed: torch.Tensor, p: Packing) -> torch.Tensor:
    """Each row's first real token [B, ...] (h_CLS of a right-padded batch, = the padded path's hidden[:, 0])."""
    return packed[p.cu_seqlens[:-1].long()]


# ----------------------------------------------------------------------------------------------------- attention
@functools.lru_cache(maxsize=None)
def _flash_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:  # not installed, or built for another torch/CUDA
        return None
    return flash_attn_varlen_func


@functools.lru_cache(maxsize=None)
def nested_sdpa_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether SDPA on nested jagged tensors runs on this device type and dtype (one tiny probe, cached)."""
    if not hasattr(torch.nested, "nested_tensor_from_jagged"):
        return False
    try:
        x = torch.ones(5, 2, 8, device=device_type, dtype=dtype)
        offsets = torch.tensor([0, 2, 5], device=device_type)
        nt = torch.nested.nested_tensor_from_jagged(x, offsets=offsets).transpose(1, 2)
        F.scaled_dot_product_attention(nt, nt, nt).transpose(1, 2).values()
        return True
    except Exception:
        return False


def attention_kernel(q: torch.Tensor) -> str:
    """The kernel `varlen_attention` uses for these packed queries (see the module docstring)."""
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and _flash_varlen() is not None:
        return "flash_attn"
    if nested_sdpa_supported(q.device.type, q.dtype):
        return "nested_sdpa"
    return "loop"


def varlen_attention(q, k, v, p: Packing, *, scale: float, dropout_p: float = 0.0, kernel: str | None = None):
    """softmax(q kᵀ·scale) v within each sequence: q, k, v [T, heads, d_head] → [T, heads, d_head]."""
    kernel = kernel or attention_kernel(q)
    if kernel == "flash_attn":
        fn = _flash_varlen()
        if fn is None:
            raise RuntimeError("kernel 'flash_attn' asked for but flash_attn is not importable")
        return fn(q, k, v, p.cu_seqlens, p.cu_seqlens, p.max_seqlen, p.max_seqlen, dropout_p=dropout_p,
                  softmax_scale=scale, causal=False)
    if kernel == "nested_sdpa":
        # torch 2.13's CPU nested path accumulates in the input dtype (bf16: 2.5x the padded kernel's error): fp32 there
        dtype = q.dtype
        if not q.is_cuda and dtype in (torch.bfloat16, torch.float16):
            q, k, v = q.float(), k.float(), v.float()
        offsets = p.cu_seqlens.long()
        q, k, v = (torch.nested.nested_tensor_from_jagged(t, offsets=offsets).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
        return out.transpose(1, 2).values().to(dtype)
    if kernel == "loop":
        bounds = p.cu_seqlens.tolist()
        outs = []
        for s, e in zip(bounds[:-1], bounds[1:]):
            qi, ki, vi = (t[s:e].transpose(0, 1) for t in (q, k, v))
            outs.append(F.scaled_dot_product_attention(qi, ki, vi, dropout_p=dropout_p, scale=scale).transpose(0, 1))
        return torch.cat(outs)
    raise ValueError(f"unknown attention kernel {kernel!r}; known: {KERNELS}")


# -------------------------------------------------------------------------------------------------------- forward
def _layer(layer: nn.Module, h: torch.Tensor, p: Packing, kernel: str | None) -> torch.Tensor:
    """One BertLayer on packed tokens [T, hidden] (its own modules; attention varlen)."""
    sa = bb.self_attention(layer)
    heads, d = sa.num_attention_heads, sa.attention_head_size
    t = h.shape[0]
    q, k, v = (proj(h).view(t, heads, d) for proj in (sa.query, sa.key, sa.value))
    dropout_p = sa.dropout.p if sa.training else 0.0
    ctx = varlen_attention(q, k, v, p, scale=d ** -0.5, dropout_p=dropout_p, kernel=kernel)
    attn = layer.attention.output(ctx.reshape(t, heads * d), h)  # dense, dropout, LayerNorm(x + h)
    return layer.output(layer.intermediate(attn), attn)  # FFN, dropout, LayerNorm(x + attn)


def encode_packed(encoder: nn.Module, input_ids, attention_mask, token_type_ids=None,
                  kernel: str | None = None) -> tuple[torch.Tensor, Packing]:
    """(last hidden states of the real tokens [T, hidden], their Packing) for a padded batch."""
    reason = unsupported_reason(encoder)
    if reason is not None:
        raise ValueError(f"unpadded forward: {reason}")
    p = pack(attention_mask)
    ids = input_ids.flatten()[p.indices][None]
    positions = (p.indices % p.length)[None]  # the token's column: the padded path's position id
    types = token_type_ids.flatten()[p.indices][None] if token_type_ids is not None else None
    h = bb.embed(encoder, ids, token_type_ids=types, position_ids=positions)[0]
    for layer in bb.layer_list(encoder):
        h = _layer(layer, h, p, kernel)
    return h, p


def last_hidden_state(encoder: nn.Module, input_ids, attention_mask, token_type_ids=None,
                      kernel: str | None = None) -> torch.Tensor:
    """The padded path's `encoder(...).last_hidden_state` [B, L, hidden], computed unpadded (zeros at padding)."""
    h, p = encode_packed(encoder, input_ids, attention_mask, token_type_ids, kernel)
    return scatter(h, p)


def cls_hidden(encoder: nn.Module, input_ids, attention_mask, token_type_ids=None,
               kernel: str | None = None) -> torch.Tensor:
    """h_CLS [B, hidden] (each row's first token), computed unpadded without scattering the rest."""
    h, p = encode_packed(encoder, input_ids, attention_mask, token_type_ids, kernel)
    return first_tokens(h, p)


def sequence_classification_logits(model: nn.Module, input_ids, attention_mask, token_type_ids=None,
                                   kernel: str | None = None) -> torch.Tensor:
    """`BertForSequenceClassification(...).logits` computed unpadded: pooler(h_CLS) → dropout → classifier."""
    if type(model).__name__ != "BertForSequenceClassification":
        raise ValueError(f"unpadded forward: {type(model).__name__} is not a BertForSequenceClassification")
    body = model.bert
    cls = cls_hidden(body, input_ids, attention_mask, token_type_ids, kernel)
    pooled = body.pooler.activation(body.pooler.dense(cls)) if body.pooler is not None else cls
    return model.classifier(model.dropout(pooled))
