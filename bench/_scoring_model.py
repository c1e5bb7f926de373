"""bench/scoring.py part 1 set-up: the one model folder both paths load, the two paths as timed, and what they count.

One HF sequence-classification model (the packaged all-MiniLM-L6-v2 body plus a 1-label head seeded with
torch.manual_seed(0)) is saved with its tokenizer to a temp folder and loaded by kd (load_cross_encoder_teacher, its
`unpadded` option set to false: the padded path), by sentence-transformers (CrossEncoder) and, for the unpadded row,
by kd again with `unpadded: true` (kd.models.unpadded: packed real tokens, varlen attention); same max length,
device and precision.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import torch


def build_model_folder(folder: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kd.models.backbone import default_backbone

    src = default_backbone()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)


def non_embedding_params(hf_model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, parameters outside the token/position/type embedding tables)."""
    total = sum(p.numel() for p in hf_model.parameters())
    emb = sum(m.weight.numel() for m in hf_model.modules() if isinstance(m, torch.nn.Embedding))
    return total, total - emb


class TokenCounter:
    """Counts padded and real tokens of every batch a scoring path tokenizes (wraps its tokenize/preprocess)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.padded = self.real = self.real_sq = self.pairs = self.batches = 0
        self.max_len = 0

    def add(self, features: dict):
        ids = features["input_ids"]
        self.padded += ids.numel()
        lengths = features["attention_mask"].sum(1)
        self.real += int(lengths.sum())
        self.real_sq += int((lengths.long() ** 2).sum())
        self.pairs += ids.shape[0]
        self.batches += 1
        self.max_len = max(self.max_len, ids.shape[1])

    def wrap_forward(self, fn):
        """Count the padded batch a model's forward receives (keyword tensors input_ids/attention_mask)."""
        def wrapped(*args, **kwargs):
            self.add(kwargs)
            return fn(*args, **kwargs)

        return wrapped

    def wrap(self, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.add(out)
            return out

        return wrapped

    def summary(self) -> dict:
        p = max(self.pairs, 1)
        return {
            "padded_tokens_per_pair": self.padded / p,
            "real_tokens_per_pair": self.real / p,
            "real_tokens_squared_per_pair": self.real_sq / p,
            "padding_efficiency": self.real / max(self.padded, 1),
            "batches": self.batches,
            "max_batch_length": self.max_len,
        }


def precision_ctx(precision: str, device: torch.device):
    if precision.startswith("autocast-"):
        dtype = torch.bfloat16 if precision.endswith("bf16") else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_paths(args, device: torch.device):
    """(ours, peer, the temp folder holding their model, the settings both ran with) for the timed rows."""
    from sentence_transformers import CrossEncoder

    from kd.teachers import load_cross_encoder_teacher

    tmp = tempfile.TemporaryDirectory(prefix="kd-bench-ce-")
    folder = Path(tmp.name)
    build_model_folder(folder)
    ours = load_cross_encoder_teacher(folder, max_length=args.max_length).to(device)
    ours.options["unpadded"] = False  # the padded path on every device ("auto" would unpad on CUDA)
    peer = CrossEncoder(str(folder), device=str(device), max_length=args.max_length)
    cast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    if cast is not None:
        ours.to(cast)
        peer.to(cast)
    ours.eval()
    peer.eval()
    return ours, peer, tmp, settings(args, device, ours, peer)


def settings(args, device: torch.device, ours, peer) -> dict:
    bs = args.batch_size
    peer_hf = peer[0].auto_model if hasattr(peer[0], "auto_model") else peer[0].model
    return {
        "max_length": args.max_length,
        "batch_size": bs,
        "precision": args.precision,
        "repeats": args.repeats,
        "warmup_batches": args.warmup_batches,
        "timed_order": "per repeat: " + ", ".join(args.impls),
        "ours_call": f"load_cross_encoder_teacher(folder, max_length={args.max_length}).predict(q, p, batch_size={bs})",
        "peer_call": f"CrossEncoder(folder, device={str(device)!r}, max_length={args.max_length})"
                     f".predict(pairs, batch_size={bs}, show_progress_bar=False)",
        "ours_unpadded_option": False,
        "ours_attn_implementation": ours.encoder.config._attn_implementation,
        "peer_attn_implementation": peer_hf.config._attn_implementation,
        "ours_max_length": ours.options["max_length"],
        "peer_max_length": getattr(peer, "max_seq_length", None),
        "peer_activation_fn": type(peer.activation_fn).__name__ if peer.activation_fn is not None else None,
        "ours_tokenizer": type(ours.tokenizer).__name__,
        "peer_tokenizer": type(peer.tokenizer).__name__,
        "peer_input": "list of [query, passage] lists (built before timing)",
        "ours_input": "two aligned lists (queries, passages)",
    }


def load_unpadded(args, device: torch.device, folder: Path):
    """The unpadded row: the same folder as kd's cross-encoder with `unpadded: true`, and the kernel it attends with."""
    from kd.models import HFCrossEncoder
    from kd.models import unpadded as up
    from kd.teachers.members import freeze

    model = freeze(HFCrossEncoder.from_backbone(str(folder), max_length=args.max_length, unpadded=True)).to(device)
    cast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    if cast is not None:
        model.to(cast)
    model.eval()
    probe_dtype = cast or (torch.bfloat16 if args.precision == "autocast-bf16" else
                           torch.float16 if args.precision == "autocast-fp16" else torch.float32)
    kernel = up.attention_kernel(torch.zeros(1, 1, 8, device=device, dtype=probe_dtype))
    return model, {
        "ours_unpadded_call": f"HFCrossEncoder.from_backbone(folder, max_length={args.max_length}, unpadded=True)"
                              f".predict(q, p, batch_size={args.batch_size})",
        "ours_unpadded_kernel": kernel,
    }
