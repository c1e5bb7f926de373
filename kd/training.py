"""Distillation building blocks, free of Ray/DeepSpeed/MLflow: examples, students, losses, one step, validation.

The runtime (kd/runtime/distill.py) wraps these in Ray Train workers and a DeepSpeed engine. Everything here is
deterministic given the config's seed, which is what makes resumption after a worker failure exact.

Modes (DistillConfig.mode):
    score_file   Margin-MSE / MSE / listwise KL against a teacher-score file        examples: (q, p⁺, p⁻, t⁺, t⁻)
    supervised   RankNet on labelled triples, no teacher (teachers, no-KD baselines)  examples: (q, p⁺, p⁻)
    in_loop      standard KD / Simplified TinyBERT, teacher run on the same batch     examples: (q, p⁺, p⁻) → 2 pairs
    embedding    query-encoder alignment to a bi-encoder teacher's query embeddings  examples: (q)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from kd.configs.base import to_flat_dict
from kd.configs.distill import DistillConfig
from kd.configs.errors import ConfigError
from kd.data import FormatError, load_passages, load_queries, read_qrels, read_trec_run
from kd.data.collate import score_collated
from kd.data.join import JoinStats
from kd.data.rows import excluded_queries as _excluded_queries
from kd.data.rows import join_stats as _join_stats
from kd.data.rows import joined_rows as _joined_rows
from kd.init import layer_subset_student, other_model_student, truncate_layers
from kd.losses import get_loss
from kd.metrics import evaluate
from kd.models import BertDot, Ranker, TinyBertCat, get_model_class
from kd.models import backbone as bb
from kd.teachers import load_bi_encoder_teacher, load_cross_encoder_teacher

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------- examples
@dataclass
class Examples:
    """Columns of training examples (all lists of equal length; absent columns are None)."""

    query: list[str]
    pos: list[str] | None = None
    neg: list[str] | None = None
    t_pos: np.ndarray | None = None
    t_neg: np.ndarray | None = None
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.query)

    def batch(self, idx: Sequence[int]) -> dict:
        out = {"query": [self.query[i] for i in idx]}
        for name in ("pos", "neg"):
            col = getattr(self, name)
            if col is not None:
                out[name] = [col[i] for i in idx]
        for name in ("t_pos", "t_neg"):
            col = getattr(self, name)
            if col is not None:
                out[name] = torch.tensor(col[list(idx)], dtype=torch.float32)
        return out


def _query_texts(cfg: DistillConfig, excluded: set[str]) -> Iterator[str]:
    """Embedding mode's examples: every query of data.query_files, minus excluded ids and repeated texts."""
    seen: set[str] = set()
    for path in cfg.data.query_files:
        for qid, text in load_queries(path, strict=cfg.data.strict).items():
            if qid in excluded or text in seen:
                continue
            seen.add(text)
            yield text


def _training_file(cfg: DistillConfig) -> str:
    return {"score_file": cfg.teacher.scores, "embedding": ", ".join(cfg.data.query_files)}.get(cfg.mode,
                                                                                               cfg.data.triples)


def _no_examples(cfg: DistillConfig, stats: dict) -> FormatError:
    return FormatError(f"no training examples (mode {cfg.mode}): {stats}", path=_training_file(cfg))


def load_examples(cfg: DistillConfig, student: Ranker | None = None):
    """The worker's training examples: `Examples` of texts, or with data.prepared the folder's memory-mapped,
    collated-from-ids examples for `student` (kd.data.prepared.PreparedExamples, same len / batch / stats)."""
    d = cfg.data
    if d.prepared:
        from kd.data.prepared import load_prepared

        if student is None:
            raise ValueError("data.prepared: the examples are collated for a student; pass it")
        return load_prepared(cfg, student)
    excluded = _excluded_queries(cfg)
    if cfg.mode == "embedding":
        ex = Examples(query=list(_query_texts(cfg, excluded)),
                      stats={"query_files": list(d.query_files), "excluded": len(excluded)})
    else:
        stats = JoinStats()
        q, p, n, tp, tn = [], [], [], [], []
        dropped_excluded = 0
        for r in _joined_rows(cfg, stats):
            if r.qid in excluded:
                dropped_excluded += 1
                continue
            q.append(r.query), p.append(r.pos), n.append(r.neg)
            tp.append(r.pos_score), tn.append(r.neg_score)
        with_scores = cfg.mode == "score_file"
        ex = Examples(
            q, p, n, np.asarray(tp, dtype=np.float64) if with_scores else None,
            np.asarray(tn, dtype=np.float64) if with_scores else None,
            stats=_join_stats(stats, dropped_excluded),
        )
    if d.max_examples is not None and len(ex) > d.max_examples:
        ex = _take(ex, d.max_examples)
    if len(ex) == 0:
        raise _no_examples(cfg, ex.stats)
    ex.stats["examples"] = len(ex)
    return ex


def check_examples(cfg: DistillConfig) -> dict:
    """The driver's pass over the training data before any Ray work: the same readers, joins and checks as
    `load_examples` (what every worker runs), streamed and counted instead of kept, so a NaN teacher score, a
    malformed line or an unknown id fails in seconds with the file and line (FormatError) instead of inside every
    Ray worker after start-up, and again after a retry. Returns the counts `load_examples` would report. With
    data.prepared: the folder against the config and the student (kd.data.prepared.check_prepared)."""
    if cfg.data.prepared:
        from kd.data.prepared import check_prepared

        return check_prepared(cfg)
    excluded = _excluded_queries(cfg)
    if cfg.mode == "embedding":
        n = sum(1 for _ in _query_texts(cfg, excluded))
        stats = {"query_files": list(cfg.data.query_files), "excluded": len(excluded)}
    else:
        join = JoinStats()
        kept = [0, 0]  # kept, excluded
        for r in _joined_rows(cfg, join):
            kept[r.qid in excluded] += 1
        n, stats = kept[0], _join_stats(join, kept[1])
    if cfg.data.max_examples is not None:
        n = min(n, cfg.data.max_examples)
    if n == 0:
        raise _no_examples(cfg, stats)
    return {**stats, "examples": n}


def _take(ex: Examples, n: int) -> Examples:
    cut = lambda col: None if col is None else col[:n]  # noqa: E731
    return Examples(ex.query[:n], cut(ex.pos), cut(ex.neg), cut(ex.t_pos), cut(ex.t_neg),
                    stats={**ex.stats, "truncated_to": n})


def rank_batches(n: int, epoch: int, seed: int, rank: int, world: int, micro_batch: int,
                 lengths: Sequence[int] | None = None, window: int = 0) -> list[list[int]]:
    """This rank's micro-batches for one epoch: a seeded permutation, strided across ranks, equal count per rank.

    With `window` > 0 and the examples' `lengths`, the same number of micro-batches grouped by length instead
    (`length_grouped_batches`, training.group_by_length); window 0 is exactly the plain batches."""
    if window:
        if lengths is None or len(lengths) != n:
            raise ValueError(f"grouping by length (window {window}) needs the length of each of the {n} examples")
        return length_grouped_batches(lengths, epoch, seed, rank, world, micro_batch, window)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = (n // world) // micro_batch * micro_batch
    mine = perm[rank::world][:per_rank]
    return [mine[i : i + micro_batch].tolist() for i in range(0, per_rank, micro_batch)]


def length_grouped_batches(lengths: Sequence[int], epoch: int, seed: int, rank: int, world: int, micro_batch: int,
                           window: int) -> list[list[int]]:
    """This rank's micro-batches for one epoch, of examples of similar length (HF's group_by_length /
    get_length_grouped_indices, made distributed and resumable):

    1. the epoch's seeded permutation ([seed, epoch], as `rank_batches`), cut to world × per_rank examples;
    2. mega-batches of `window` steps (window × world × micro_batch consecutive examples), each sorted by length,
       longest first (stable, so ties keep the permutation's order);
    3. each mega-batch cut into steps of world × micro_batch examples; rank r takes the r-th of every world
       examples of a step (strided, so at one step every rank holds batches of about the same length: the step
       waits for the slowest rank anyway);
    4. the order of all the epoch's steps shuffled ([seed, epoch, 1]): no long-to-short order inside a window.

    Deterministic given (lengths, seed, epoch, rank, world); disjoint across ranks, every example at most once, and
    the same number of micro-batches per rank as `rank_batches`, so a resumed run skips the same steps. Padding in
    a micro-batch comes only from length differences inside one mega-batch; a larger window pads less and mixes
    less (window ≥ steps per epoch sorts the whole epoch)."""
    lengths = np.asarray(lengths)
    n = len(lengths)
    per_rank = (n // world) // micro_batch * micro_batch
    perm = np.random.default_rng([seed, epoch]).permutation(n)[: per_rank * world]
    step, mega = world * micro_batch, window * world * micro_batch
    steps = []
    for start in range(0, len(perm), mega):
        chunk = perm[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        steps += [chunk[i : i + step] for i in range(0, len(chunk), step)]
    order = np.random.default_rng([seed, epoch, 1]).permutation(len(steps))
    return [steps[s][rank::world].tolist() for s in order]


def example_lengths(examples: Examples, student: Ranker) -> np.ndarray:
    """The length key `length_grouped_batches` sorts by: the student's token count of the query plus that of the
    longer of its two passages, each truncated at the student's max length for its side (the query alone in
    embedding mode). Tokens, not characters: on SciFact 95% of the abstracts reach max_passage_length 200, so what
    still pads is the query side, which a character key (dominated by the passage) cannot group. Measured
    (`padding_fraction`) on the quickstart's 1,820 SciFact triples, BERT_DOT 30/200, 16 a batch, window 50:
    padding 3.1% plain, 3.1% by characters, 1.3% by tokens (max 512: 33%, 22%, 15%). A cross-encoder pads each
    pair to the longest (q, p) pair of the batch, which a truncated abstract almost always reaches: no gain there
    (BERT_CAT 30/200: 1.4% either way). Cost: one tokenizer pass over the distinct texts (about 1 s here)."""
    q_max, p_max = _side_max_lengths(student)
    if not isinstance(examples, Examples):  # prepared: the stored word-piece counts (kd.data.prepared)
        return examples.lengths(q_max, p_max, student.tokenizer.num_special_tokens_to_add(False))
    key = token_lengths(examples.query, student.tokenizer, q_max)
    if examples.pos is not None:
        key = key + np.maximum(token_lengths(examples.pos, student.tokenizer, p_max),
                               token_lengths(examples.neg, student.tokenizer, p_max))
    return key


def _side_max_lengths(student: Ranker) -> tuple[int, int]:
    """(query, passage) max lengths of the student: its own per-side options, else its pair max length (the
    TinyBERT / HF cross-encoders), else 512."""
    o = student.options
    pair = o.get("max_length", 512)
    return o.get("max_query_length", pair), o.get("max_passage_length", pair)


def token_lengths(texts: Sequence[str], tokenizer, max_length: int) -> np.ndarray:
    """Token count of each text truncated at `max_length` (special tokens included). Each distinct text is
    tokenized once (a triple file repeats its queries and positives), cut first at 10 × max_length characters:
    past the cut the tokens would be truncated anyway, unless the text's tokens average over 10 characters."""
    unique = list(dict.fromkeys(texts))
    ids = tokenizer([t[: 10 * max_length] for t in unique], truncation=True, max_length=max_length)["input_ids"]
    count = dict(zip(unique, map(len, ids)))
    return np.fromiter((count[t] for t in texts), np.int64, len(texts))


def padding_fraction(student: Ranker, examples: Examples, batches: Sequence[Sequence[int]]) -> float:
    """Pad tokens / all tokens of the padded micro-batches, as the student tokenizes them in a step: its own
    `tokenize` (max lengths included) of the pairs (q, p⁺) and (q, p⁻) in one call, as `score_triples` /
    DistillStep do; every attention mask of the result counts. A dual encoder's own `score_triples` encodes each
    query once, so only the first half of its query-side rows (`q_*`) count. Embedding mode (queries only): the
    queries at the student's max query length."""
    once = type(student).score_triples is not Ranker.score_triples  # BERT_DOT, ColBERT: queries encoded once
    pad = total = 0
    for idx in batches:
        b = examples.batch(idx)
        if "pos" in b:
            inputs = student.tokenize(b["query"] + b["query"], b["pos"] + b["neg"])
        else:
            inputs = student.tokenizer(b["query"], padding=True, truncation=True,
                                       max_length=student.options.get("max_query_length"), return_tensors="pt")
        for key, mask in inputs.items():
            if key.endswith("mask"):
                mask = mask[: len(idx)] if once and key.startswith("q_") else mask
                total += mask.numel()
                pad += int((mask == 0).sum())
    return pad / total if total else 0.0


# ------------------------------------------------------------------------------------------- models and losses
def load_teacher_model(cfg: DistillConfig) -> Ranker | None:
    if cfg.mode not in ("in_loop", "embedding") and cfg.student.init.strategy != "teacher_layers":
        return None
    if cfg.teacher.kind == "bi" or cfg.mode == "embedding":
        return load_bi_encoder_teacher(cfg.teacher.model)
    return load_cross_encoder_teacher(cfg.teacher.model)


def build_student(cfg: DistillConfig, teacher: Ranker | None) -> Ranker:
    s, init = cfg.student, cfg.student.init
    if init.strategy == "teacher_layers":
        if teacher is None:
            raise ValueError("student.init.strategy=teacher_layers needs teacher.model")
        if teacher.architecture != s.architecture:
            raise ValueError(f"teacher_layers init copies the teacher: teacher is {teacher.architecture!r}, "
                             f"student.architecture is {s.architecture!r}")
        return layer_subset_student(teacher, init.layers, init.num_layers)
    if init.strategy == "other_model":
        if teacher is None or not isinstance(teacher, BertDot):
            raise ValueError("other_model init needs a bi-encoder teacher (its width sets the projection)")
        return other_model_student(s.backbone, teacher.embedding_dim, **s.options)
    student = get_model_class(s.architecture).from_backbone(s.backbone, **s.options)
    if init.num_layers is not None:
        student = truncate_layers(student, init.num_layers) if init.layers is None else \
            layer_subset_student(student, init.layers, init.num_layers)
    elif init.layers is not None:
        student = layer_subset_student(student, init.layers)
    return student


def build_loss(cfg: DistillConfig, student: Ranker, teacher: Ranker | None) -> nn.Module:
    options = dict(cfg.loss.options)
    if cfg.loss.name == "simplified_tinybert":
        options.setdefault("student_layers", bb.num_layers(student.encoder))
        options.setdefault("teacher_layers", bb.num_layers(teacher.encoder))
        options.setdefault("student_hidden", bb.hidden_size(student.encoder))
        options.setdefault("teacher_hidden", bb.hidden_size(teacher.encoder))
    return get_loss(cfg.loss.name, **options)


class DistillStep(nn.Module):
    """Student + loss as one module (so the optimizer also trains loss parameters such as TinyBERT's W_h).

    `forward(batch)` returns the scalar loss for one micro-batch; the frozen teacher is held outside the module
    tree (not trained, not checkpointed).
    """

    def __init__(self, mode: str, student: Ranker, loss: nn.Module, teacher: Ranker | None = None,
                 student_scale: float = 1.0):
        super().__init__()
        self.mode, self.student, self.loss, self.student_scale = mode, student, loss, student_scale
        self._teacher = [teacher]  # a list keeps it out of .parameters() / state_dict()
        if mode == "in_loop" and teacher is not None and teacher.tokenizer.get_vocab() != student.tokenizer.get_vocab():
            raise ValueError("in-loop KD runs teacher and student on the same tokens: their vocabularies differ")

    @classmethod
    def from_config(cls, cfg: DistillConfig, student: Ranker, teacher: Ranker | None = None) -> "DistillStep":
        """The step `cfg` defines: its loss (`build_loss`), `loss.student_scale`, and the teacher held only where the
        step runs it (in-loop and embedding KD)."""
        return cls(cfg.mode, student, build_loss(cfg, student, teacher),
                   teacher if cfg.mode in ("in_loop", "embedding") else None, cfg.loss.student_scale)

    @property
    def teacher(self) -> Ranker | None:
        return self._teacher[0]

    def forward(self, batch: dict) -> torch.Tensor:
        q = batch.get("query")
        device = next(self.student.parameters()).device
        if self.mode == "embedding":
            with torch.no_grad():
                target = self.teacher.encode_queries(q).float()
            return self.loss(self.student.encode_queries(q).float(), target)
        if self.mode == "in_loop":
            inputs = self.student.tokenize(q + q, batch["pos"] + batch["neg"])
            inputs = {k: v.to(device) for k, v in inputs.items()}
            labels = torch.cat([torch.ones(len(q)), torch.zeros(len(q))]).long().to(device)
            with torch.no_grad():
                t = self.teacher.forward_kd(**inputs)
            s = self.student.forward_kd(**inputs)
            if self.loss.kind == "logits":
                return self.loss(s.logits.float(), t.logits.float(), labels)
            return self.loss(s.logits.float(), t.logits.float(), labels, [a.float() for a in s.attentions],
                             [a.float() for a in t.attentions], [h.float() for h in s.hidden_states],
                             [h.float() for h in t.hidden_states], inputs["attention_mask"])
        if "features" in batch:  # collated from token ids (data.prepared, kd/data/collate.py)
            s_pos, s_neg = score_collated(self.student, batch["features"])
        else:
            s_pos, s_neg = self.student.score_triples(q, batch["pos"], batch["neg"])
        s_pos, s_neg = s_pos.float() * self.student_scale, s_neg.float() * self.student_scale  # LossConfig
        if self.mode == "supervised":
            return self.loss(s_pos, s_neg)
        t_pos, t_neg = batch["t_pos"].to(device), batch["t_neg"].to(device)
        kind = self.loss.kind
        if kind == "pairwise":
            return self.loss(s_pos, s_neg, t_pos, t_neg)
        if kind == "pointwise":
            return self.loss(torch.cat([s_pos, s_neg]), torch.cat([t_pos, t_neg]))
        return self.loss(torch.stack([s_pos, s_neg], 1), torch.stack([t_pos, t_neg], 1))  # listwise over (p⁺, p⁻)


def check_vocabularies(cfg: DistillConfig) -> None:
    """In-loop KD feeds the student's token ids to the teacher too (DistillStep), so a student built from its own
    backbone must share the teacher's vocabulary. Checked on the driver from the two tokenizers alone (no weights):
    the mismatch would otherwise surface only inside every Ray worker, after the models were loaded."""
    if cfg.mode != "in_loop" or cfg.student.init.strategy == "teacher_layers":  # a layer copy has the teacher's
        return
    from transformers import AutoTokenizer

    teacher = AutoTokenizer.from_pretrained(bb.resolve(cfg.teacher.model)).get_vocab()
    student = AutoTokenizer.from_pretrained(bb.resolve(cfg.student.backbone)).get_vocab()
    if teacher != student:
        raise ConfigError(
            f"field student.backbone: in-loop KD runs teacher and student on the same tokens, but the vocabulary of "
            f"{cfg.student.backbone} ({len(student)} tokens) differs from that of teacher.model {cfg.teacher.model} "
            f"({len(teacher)} tokens); use a backbone with the teacher's tokenizer or student.init.strategy="
            "teacher_layers")


# ------------------------------------------------------------------------------------------------- run identity
# fields that do not change what a run computes: where it is stored and tracked, how it is registered, and the
# fault-tolerance / bookkeeping knobs (a rerun may change these and still resume)
NOT_RUN_DEFINING = ("run.", "mlflow.", "registry.", "training.max_failures", "training.num_to_keep",
                    "training.fault_injection", "training.checkpoint_every", "training.log_every")


def run_fields(cfg: DistillConfig) -> dict:
    """The flat config fields that define a run (what its checkpoints were trained with); paths as given, so
    resolve them first (kd.runtime.distill.absolutize) for a relative and an absolute path to compare equal."""
    return {k: v for k, v in to_flat_dict(cfg).items() if not k.startswith(NOT_RUN_DEFINING)}


# fields added to DistillConfig after runs were first saved, with the value such a run was trained with: a run
# saved without one computed exactly what the field's default computes, so it still resumes
ADDED_FIELDS = {"loss.student_scale": 1.0, "training.group_by_length": 0, "data.prepared": None}


def changed_fields(old: dict, new: dict) -> list[str]:
    """`key: old → new` for every field that differs (added and removed fields included), sorted by key; a field of
    ADDED_FIELDS that `old` lacks counts as its old default."""
    missing = object()
    old = {**{k: v for k, v in ADDED_FIELDS.items() if k in new}, **old}
    shown = lambda v: "(absent)" if v is missing else repr(v)  # noqa: E731
    return [f"{key}: {shown(old.get(key, missing))} → {shown(new.get(key, missing))}"
            for key in sorted(set(old) | set(new)) if old.get(key, missing) != new.get(key, missing)]


# --------------------------------------------------------------------------------------------------- validation
def metric_key(name: str) -> str:
    """`ndcg@10` → `ndcg_at_10`: MLflow metric names may not contain '@'."""
    return name.replace("@", "_at_")


class Validator:
    """Re-rank the top_k candidates of a dev run for this rank's share of the dev queries.

    Queries: those of the run that have qrels, sorted, capped at max_queries; rank r takes every world-th one.
    The runtime gathers every rank's partial run and computes the metric over all of them.
    """

    def __init__(self, cfg: DistillConfig, rank: int = 0, world: int = 1):
        v = cfg.validation
        self.cfg = v
        qrels = read_qrels(v.qrels)
        run = read_trec_run(v.run)
        queries = load_queries(v.queries)
        qids = sorted(q for q in run if q in qrels and q in queries)
        if not qids:
            raise FormatError(f"validation: no query of this run has qrels in {v.qrels} and text in {v.queries}",
                              path=v.run)
        if v.max_queries:
            qids = qids[: v.max_queries]
        self.all_qids = qids
        self.qrels = {q: qrels[q] for q in qids}
        mine = qids[rank::world]
        passages = load_passages(v.passages, use_title=cfg.data.use_title, show_progress=False)
        self.pairs: list[tuple[str, str, str, str]] = []  # (qid, docid, query, passage)
        missing = 0
        for qid in mine:
            top = sorted(run[qid].items(), key=lambda kv: (-kv[1], kv[0]))[: v.top_k]
            for docid, _ in top:
                if docid not in passages:
                    missing += 1
                    continue
                self.pairs.append((qid, docid, queries[qid], passages[docid]))
        if missing:
            logger.warning("validation: %d candidate passages of %s have no text in %s (skipped)", missing, v.run,
                           v.passages)
        self.missing = missing

    def partial_run(self, score: Callable[[list[str], list[str]], torch.Tensor]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        if not self.pairs:
            return out
        scores = score([p[2] for p in self.pairs], [p[3] for p in self.pairs]).tolist()
        for (qid, docid, _, _), s in zip(self.pairs, scores):
            out.setdefault(qid, {})[docid] = float(s)
        return out

    def metrics(self, run: dict[str, dict[str, float]]) -> dict[str, float]:
        names = [self.cfg.metric, "ndcg@10", "mrr@10"]
        res = evaluate(run, self.qrels, metrics=tuple(dict.fromkeys(names)), relevance_level=self.cfg.relevance_level)
        return {metric_key(k): float(v) for k, v in res.items()}


def validation_scorer(step: DistillStep, batch_size: int) -> Callable[[list[str], list[str]], torch.Tensor]:
    """How a student ranks candidates during validation (embedding mode: student queries × teacher documents)."""
    student = step.student
    if step.mode != "embedding":
        return lambda q, p: student.predict(q, p, batch_size=batch_size)
    teacher = step.teacher
    cache: dict[str, torch.Tensor] = {}

    @torch.inference_mode()
    def score(queries: list[str], passages: list[str]) -> torch.Tensor:
        todo = [p for p in dict.fromkeys(passages) if p not in cache]
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            for text, emb in zip(chunk, teacher.encode_docs(chunk).float().cpu()):
                cache[text] = emb
        was = student.training
        student.eval()
        try:
            uq = list(dict.fromkeys(queries))
            qemb = {t: e for i in range(0, len(uq), batch_size)
                    for t, e in zip(uq[i : i + batch_size], student.encode_queries(uq[i : i + batch_size]).float().cpu())}
        finally:
            student.train(was)
        return torch.stack([(qemb[q] * cache[p]).sum() for q, p in zip(queries, passages)])

    return score
