"""Training batches from token ids: exactly the tensors each student's `tokenize` builds from text, built instead
from the per-text token ids of a prepared folder (kd/data/prepared.py), so no text is tokenised in the step.

Why exact, and how: a prepared folder stores each distinct text's word pieces WITHOUT special tokens, cut at a
cap, plus its full (untruncated) word-piece count. The HF tokenizers truncate a single text to a prefix and a pair
by the `tokenizers` library's `longest_first` rule, which depends only on the two full counts (`longest_first`
below, tests/test_prepared.py checks it against the real tokenizer). The special-token template ([CLS] t [SEP],
[CLS] q [SEP] p [SEP], token types 0/1, right padding) is probed from the tokenizer itself (`Specials`); a
tokenizer whose template differs is refused rather than approximated. Layouts per architecture:

    bert_cat, tinybert_cat, hf_cross_encoder   [CLS] q [SEP] p [SEP], joint truncation to max_length − 3
    bert_dot, colbert                          [CLS] t [SEP] per side (ColBERT: + its [MASK] query augmentation)
    prettr                                     [CLS] q [SEP] and p [SEP] (its own `tokenize`: the passage's [CLS] cut)
    tk                                         word pieces only, per side

`TripleCollator` builds one micro-batch of triples in the form `score_collated` scores with the same calls the
student's own `score_triples` makes (so the losses equal the raw path's bit for bit).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from kd.models.colbert import augment_queries

PAIR = ("bert_cat", "tinybert_cat", "hf_cross_encoder")
SUPPORTED = (*PAIR, "bert_dot", "colbert", "prettr", "tk")


class NotCollatable(ValueError):
    """This student's inputs cannot be built exactly from stored token ids (the reason is the message)."""


@dataclass(frozen=True)
class TokenTable:
    """One side's texts: `ids` flat int32 word pieces (no special tokens, each text cut at the folder's cap),
    `offsets` int64 [n + 1] (text i is ids[offsets[i]:offsets[i + 1]]), `lengths` int32 [n] full counts."""

    ids: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray

    def tokens(self, row: int, keep: int) -> np.ndarray:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        if min(keep, int(self.lengths[row])) > end - start:
            raise ValueError(f"text row {row}: {keep} word pieces needed, {end - start} stored (cap too small)")
        return self.ids[start : start + min(keep, end - start)]


@dataclass(frozen=True)
class Specials:
    """The tokenizer's special tokens, checked to be the BERT template (else NotCollatable)."""

    cls: int
    sep: int
    pad: int
    mask: int | None
    token_types: bool  # the tokenizer returns token_type_ids
    single: int  # special tokens added to one text
    pair: int  # ... to a pair

    @classmethod
    def of(cls, tokenizer) -> "Specials":
        c, s, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
        if None in (c, s, pad):
            raise NotCollatable(f"tokenizer {type(tokenizer).__name__} has no [CLS]/[SEP]/[PAD] token")
        if getattr(tokenizer, "padding_side", "right") != "right":
            raise NotCollatable(f"tokenizer pads on the {tokenizer.padding_side}, collation pads on the right")
        a = tokenizer("a b", add_special_tokens=False)["input_ids"]
        b = tokenizer("c", add_special_tokens=False)["input_ids"]
        one, two = tokenizer("a b"), tokenizer("a b", "c")
        types = "token_type_ids" in two
        ok = one["input_ids"] == [c, *a, s] and two["input_ids"] == [c, *a, s, *b, s]
        if types:
            ok = ok and two["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        if not ok:
            raise NotCollatable(f"tokenizer {type(tokenizer).__name__} does not build [CLS] q [SEP] p [SEP] "
                                f"(got {two['input_ids']} for ids {a} + {b})")
        return cls(c, s, pad, tokenizer.mask_token_id, types, tokenizer.num_special_tokens_to_add(False),
                   tokenizer.num_special_tokens_to_add(True))


def longest_first(n1: int, n2: int, budget: int) -> tuple[int, int]:
    """Word pieces kept of a pair of full lengths (n1, n2) under `truncation="longest_first"` with `budget` pieces
    for both (max_length minus the special tokens): the rule of the `tokenizers` library (truncation.rs)."""
    if n1 + n2 <= budget:
        return n1, n2
    swap = n1 > n2
    a, b = (n2, n1) if swap else (n1, n2)  # a: the shorter
    b = a if a > budget else max(a, budget - a)
    if a + b > budget:
        a = budget // 2
        b = a + budget % 2
    a, b = (b, a) if swap else (a, b)
    return min(n1, a), min(n2, b)


def _pad(rows: Sequence[np.ndarray], pad: int, types: Sequence[np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """Right-padded int64 input_ids [+ token_type_ids] + attention_mask, as the HF tokenizers pad."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    tt = np.zeros((len(rows), width), dtype=np.int64) if types is not None else None
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
        if tt is not None:
            tt[i, : len(r)] = types[i]
    out = {"input_ids": torch.from_numpy(ids)}
    if tt is not None:
        out["token_type_ids"] = torch.from_numpy(tt)
    out["attention_mask"] = torch.from_numpy(mask)
    return out


class Layouts:
    """The three ways texts become a padded batch, for one tokenizer's `Specials`."""

    def __init__(self, specials: Specials):
        self.sp = specials

    def single(self, table: TokenTable, rows: Sequence[int], max_length: int) -> dict[str, torch.Tensor]:
        """`tokenizer(texts, padding=True, truncation=True, max_length=max_length)`: [CLS] t [SEP]."""
        sp, keep = self.sp, max(max_length - self.sp.single, 0)
        seqs = [np.concatenate([[sp.cls], table.tokens(r, keep), [sp.sep]]) for r in rows]
        return _pad(seqs, sp.pad, [0] * len(seqs) if sp.token_types else None)

    def pair(self, q: TokenTable, p: TokenTable, q_rows: Sequence[int], p_rows: Sequence[int],
             max_length: int) -> dict[str, torch.Tensor]:
        """`tokenizer(queries, passages, padding=True, truncation="longest_first", max_length=max_length)`."""
        sp, budget = self.sp, max(max_length - self.sp.pair, 0)
        seqs, types = [], []
        for qr, pr in zip(q_rows, p_rows):
            a, b = longest_first(int(q.lengths[qr]), int(p.lengths[pr]), budget)
            qt, pt = q.tokens(qr, a), p.tokens(pr, b)
            seqs.append(np.concatenate([[sp.cls], qt, [sp.sep], pt, [sp.sep]]))
            types.append(np.concatenate([np.zeros(len(qt) + 2, np.int64), np.ones(len(pt) + 1, np.int64)]))
        return _pad(seqs, sp.pad, types if sp.token_types else None)

    def plain(self, table: TokenTable, rows: Sequence[int], max_length: int) -> dict[str, torch.Tensor]:
        """TK's `_tokenize`: word pieces only, mask as int64; a batch of empty texts gets one padded slot."""
        seqs = [table.tokens(r, max_length) for r in rows]
        if max(map(len, seqs)) == 0:
            b = len(seqs)
            return {"input_ids": torch.full((b, 1), self.sp.pad), "attention_mask": torch.zeros(b, 1).long()}
        out = _pad(seqs, self.sp.pad)
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    def colbert_queries(self, batch: dict[str, torch.Tensor], n_mask: int) -> dict[str, torch.Tensor]:
        """ColBERT's query augmentation, the model's own function (kd.models.colbert.augment_queries)."""
        return augment_queries(batch, n_mask, self.sp.pad, self.sp.mask)

def side_caps(architecture: str, options: dict, specials: Specials) -> tuple[int, int]:
    """Word pieces (no special tokens) a prepared folder must keep per query and per passage for this student to be
    collated exactly: a pair model's longest_first can give either side the whole budget."""
    o = options
    if architecture in PAIR:
        budget = (o["max_query_length"] + o["max_passage_length"] + 3 if architecture == "bert_cat"
                  else o["max_length"]) - specials.pair
        return max(budget, 0), max(budget, 0)
    q, p = o["max_query_length"], o["max_passage_length"]
    if architecture in ("bert_dot", "colbert"):
        return max(q - specials.single, 0), max(p - specials.single, 0)
    if architecture == "prettr":
        return max(q - specials.single, 0), max(p + 1 - specials.single, 0)
    if architecture == "tk":
        return q, p
    raise NotCollatable(f"architecture {architecture!r} has no collation from token ids (supported: {SUPPORTED})")


class TripleCollator:
    """One student's micro-batches of triples from row indices into the query / passage tables."""

    def __init__(self, architecture: str, options: dict, tokenizer, queries: TokenTable, passages: TokenTable):
        if architecture not in SUPPORTED:
            raise NotCollatable(f"architecture {architecture!r} has no collation from token ids "
                                f"(supported: {SUPPORTED})")
        self.arch, self.o = architecture, dict(options)
        self.layouts = Layouts(Specials.of(tokenizer))
        self.q, self.p = queries, passages

    def inputs(self, q_rows: Sequence[int], p_rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """Exactly `student.tokenize(query texts, passage texts)` for aligned rows."""
        L, a, o = self.layouts, self.arch, self.o
        if a in PAIR:
            total = o["max_query_length"] + o["max_passage_length"] + 3 if a == "bert_cat" else o["max_length"]
            return L.pair(self.q, self.p, q_rows, p_rows, total)
        if a == "tk":
            q, d = L.plain(self.q, q_rows, o["max_query_length"]), L.plain(self.p, p_rows, o["max_passage_length"])
            return {"q_input_ids": q["input_ids"], "q_mask": q["attention_mask"],
                    "d_input_ids": d["input_ids"], "d_mask": d["attention_mask"]}
        if a == "prettr":
            q = L.single(self.q, q_rows, o["max_query_length"])
            d = L.single(self.p, p_rows, o["max_passage_length"] + 1)
            return {"q_input_ids": q["input_ids"], "q_attention_mask": q["attention_mask"],
                    "d_input_ids": d["input_ids"][:, 1:], "d_attention_mask": d["attention_mask"][:, 1:]}
        q, d = self.queries(q_rows), self.docs(p_rows)
        return {**{f"q_{k}": v for k, v in q.items()}, **{f"d_{k}": v for k, v in d.items()}}

    def queries(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """A dual encoder's query side (what its encode_queries tokenizes)."""
        q = self.layouts.single(self.q, rows, self.o["max_query_length"])
        return self.layouts.colbert_queries(q, self.o["n_mask_tokens"]) if self.arch == "colbert" else q

    def docs(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        return self.layouts.single(self.p, rows, self.o["max_passage_length"])

    def triples(self, q_rows: Sequence[int], pos_rows: Sequence[int], neg_rows: Sequence[int]) -> dict:
        """One micro-batch: the dual encoders encode each query once (as their score_triples), the others score
        the 2B pairs (q, p⁺) + (q, p⁻) in one forward (as Ranker.score_triples)."""
        q_rows, d_rows = list(q_rows), list(pos_rows) + list(neg_rows)
        if self.arch in ("bert_dot", "colbert"):
            return {"queries": self.queries(q_rows), "docs": self.docs(d_rows)}
        return {"pairs": self.inputs(q_rows + q_rows, d_rows)}


def score_collated(student, features: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(s(q, p⁺), s(q, p⁻)) of a `TripleCollator.triples` batch, by the calls the student's own `score_triples`
    makes after tokenising (ColBERT: its token vectors `_vectors`, the one private method used here)."""
    device = student.device
    move = lambda batch: {k: v.to(device) for k, v in batch.items()}  # noqa: E731
    if "pairs" in features:
        scores = student(**move(features["pairs"]))
        half = len(scores) // 2
        return scores[:half], scores[half:]
    q_in, d_in = move(features["queries"]), move(features["docs"])
    n = len(q_in["input_ids"])
    if student.architecture == "bert_dot":
        q, d = student.embed(**q_in), student.embed(**d_in)
        return (q * d[:n]).sum(-1), (q * d[n:]).sum(-1)
    q, d = student._vectors(**q_in), student._vectors(**d_in)
    qm, dm = q_in["attention_mask"], d_in["attention_mask"]
    return (student.late_interaction(q, qm, d[:n], dm[:n]), student.late_interaction(q, qm, d[n:], dm[n:]))
