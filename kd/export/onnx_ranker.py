"""An exported folder served by onnxruntime, with the interface of the PyTorch ranker it was exported from.

`load_onnx_ranker(folder)` (what kd.models.loader.load_ranker, and so `kd.load` and `kd rerank`, call for a folder
with kd_onnx.json) returns an `OnnxBertCat`, `OnnxTinyBertCat`, `OnnxBertDot` or `OnnxColBERT`: a subclass of the
architecture's own class whose one graph-shaped method runs the ONNX graph instead of the PyTorch encoder —

    OnnxBertCat.forward / OnnxTinyBertCat.forward → the score graph
    OnnxBertDot.embed                              → the embedding graph (queries and passages alike)
    OnnxColBERT._vectors                           → the token-vector graph

— so tokenization, truncation, ColBERT's [MASK] augmentation and MaxSim, BERT_DOT's encode-each-text-once `predict`,
and the length-sorted batching of `Ranker.predict` are the PyTorch model's own code, and the scores differ only by
what the graph computes. The instances hold no parameters (`device` is always the CPU; `.to()` moves nothing) and
cannot be trained or saved as kd folders; `num_parameters` reports the exported model's.

onnxruntime runs on the CPU with `threads` intra-op threads (default: torch.get_num_threads(), i.e. the same
OMP_NUM_THREADS knob as the PyTorch models, which is the machine's cores), one inter-op thread and all of its graph
optimizations (`SESSION`, recorded in each manifest). ORT_ENABLE_EXTENDED instead of ALL measured within noise of
it on the fused int8 graph; the fusions that matter are already in the file (kd/export/fusion.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd.export.manifest import read_manifest
from kd.models.base import Ranker
from kd.models.bert_cat import BertCat
from kd.models.bert_dot import BertDot
from kd.models.colbert import ColBERT
from kd.models.tinybert_cat import TinyBertCat


class OnnxRanker(Ranker):
    """The onnxruntime half every exported class shares: the session, its inputs, the manifest."""

    def __init__(self, folder: Path, manifest: dict[str, Any], tokenizer, session):
        Ranker.__init__(self, None, tokenizer, **manifest["options"])  # not the architecture's: it builds layers
        self.folder, self.manifest, self.session = Path(folder), manifest, session
        self.graph_inputs = [i.name for i in session.get_inputs()]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def quantization(self) -> dict | None:
        return self.manifest.get("quantization")

    def run_graph(self, **batch: torch.Tensor) -> torch.Tensor:
        """The graph's output for a padded batch (int64 token ids / masks; inputs the graph lacks are dropped)."""
        feeds = {n: np.ascontiguousarray(batch[n].detach().cpu().numpy(), dtype=np.int64) for n in self.graph_inputs}
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def num_parameters(self, trainable_only: bool = False) -> int:
        return 0 if trainable_only else int(self.manifest.get("source", {}).get("parameters") or 0)

    @classmethod
    def from_pretrained(cls, folder):  # noqa: D102
        raise TypeError("an ONNX export is loaded with kd.export.load_onnx_ranker / kd.load, not from_pretrained")

    def save_pretrained(self, folder):  # noqa: D102
        raise TypeError(f"{self.folder} is an ONNX export: it has no PyTorch weights to save; copy the folder")

    def extra_repr(self) -> str:
        q = self.quantization
        return f"onnx={self.folder}, architecture={self.architecture!r}, " \
               f"quantization={q['weights'] if q else None}, options={self.options}"


class OnnxBertCat(OnnxRanker, BertCat):
    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        return self.run_graph(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


class OnnxTinyBertCat(OnnxRanker, TinyBertCat):
    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        return self.run_graph(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

    def logits(self, *args, **kwargs):
        raise NotImplementedError("the ONNX export's graph ends in the relevance score softmax(z)[1], not the logits")

    def forward_kd(self, *args, **kwargs):
        raise NotImplementedError("an ONNX export only scores; layer-wise distillation needs the PyTorch model")


class OnnxBertDot(OnnxRanker, BertDot):
    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        return self.run_graph(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


class OnnxColBERT(OnnxRanker, ColBERT):
    def _vectors(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        return self.run_graph(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


CLASSES: dict[str, type[OnnxRanker]] = {
    c.architecture: c for c in (OnnxBertCat, OnnxTinyBertCat, OnnxBertDot, OnnxColBERT)
}


SESSION = {"graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_num_threads": "torch.get_num_threads()",
           "inter_op_num_threads": 1, "providers": ["CPUExecutionProvider"]}


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, SESSION["graph_optimization_level"])
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = SESSION["inter_op_num_threads"]
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), opts, providers=SESSION["providers"])


def load_onnx_ranker(folder: str | Path, threads: int | None = None) -> OnnxRanker:
    """An exported folder (kd export --format onnx) → its eval-mode onnxruntime ranker; the graph files are checked
    against the manifest's sha256 first."""
    from transformers import AutoTokenizer

    folder = Path(folder).expanduser()
    manifest = read_manifest(folder)
    arch = manifest.get("architecture")
    if arch not in CLASSES:
        raise ValueError(f"{folder}: an ONNX export of architecture {arch!r}, which this kd cannot serve; "
                         f"known: {sorted(CLASSES)}")
    graph = manifest["graphs"]["model"]
    model = CLASSES[arch](folder, manifest, AutoTokenizer.from_pretrained(folder),
                          session(folder / graph["file"], threads))
    return model.eval()
