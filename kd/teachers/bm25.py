"""BM25 as a teacher member: a lexical score for any (query, passage) pair from one corpus's statistics.

Tokenisation is kd/data/bm25.py's (bm25s' regex tokenizer, lower-casing, bm25s' English stopwords, the Snowball
English stemmer), and the scoring function is bm25s' `method="lucene"`:

    s(q, p) = Σ_{t ∈ q} idf(t) · tf(t, p) / (tf(t, p) + k1 · (1 − b + b · |p| / avgdl))
    idf(t)  = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))

N, df and avgdl (mean token count per document) come from the corpus; |p| is the passage's token count after
stopword removal. The sum runs over the query's tokens with repetition (bm25s scores a repeated query term once per
occurrence), and a query term absent from the corpus contributes 0 (bm25s' index has no column for it). Like Lucene
since 8.0 and bm25s, the numerator has no (k1 + 1) factor (same ranking, scores 1/(k1+1) of the classic form).

For a document of the corpus the score equals bm25s' own score for it (tests/test_teachers.py); a passage outside
the corpus is scored from the same statistics, so a pair's score never depends on which run or batch it came from.
Building the member tokenises the whole corpus once, ≈ 0.3 ms per passage on one core (0.9 s for the quickstart's
3.4k SciFact passages, 1.7 s for SciFact's 5.2k; extrapolated, ~45 min and several GB of memory for MS MARCO's 8.8M);
it keeps only the vocabulary and df. Scoring runs ≈ 3k pairs/s on one core.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from kd.models.base import _check_pairs
from kd.progress import Progress
from kd.teachers.checks import sha256_file

STOPWORDS = "en"  # kd/data/bm25.py's BM25Index defaults
STEMMER = "english"


def _stemmer():
    import Stemmer  # PyStemmer

    return Stemmer.Stemmer(STEMMER)


class CorpusChanged(ValueError):
    """A BM25 corpus file whose sha256 is not the one the scores were made with."""

    def __init__(self, actual: str, expected: str):
        super().__init__(f"sha256 {actual[:12]}… ≠ {expected[:12]}…")
        self.actual, self.expected = actual, expected


class BM25Member(nn.Module):
    """Frozen, parameter-free, CPU. Build with `BM25Member.from_corpus(path)`."""

    architecture = "bm25"
    dual_encoder = False

    def __init__(self, vocab: dict[str, int], df: np.ndarray, n_docs: int, avgdl: float, *, k1: float = 1.5,
                 b: float = 0.75, corpus: str | None = None, corpus_digest: str | None = None):
        super().__init__()
        if n_docs < 1 or avgdl <= 0:
            raise ValueError(f"BM25 needs a corpus with at least one token (N={n_docs}, avgdl={avgdl})")
        self.vocab, self.n_docs, self.avgdl, self.k1, self.b = vocab, int(n_docs), float(avgdl), float(k1), float(b)
        df = np.asarray(df, dtype=np.float64)
        self.idf = np.log1p((self.n_docs - df + 0.5) / (df + 0.5))  # float64, one per vocabulary id
        self.corpus, self.corpus_digest = corpus, corpus_digest
        self.options = {"k1": self.k1, "b": self.b, "corpus": corpus}
        self._stem = _stemmer()

    @classmethod
    def from_corpus(cls, path: str | Path, *, use_title: bool = True, k1: float = 1.5, b: float = 0.75,
                    expected_sha256: str | None = None) -> "BM25Member":
        """Statistics of a passages file: BEIR corpus.jsonl[.gz] (title + " " + text with use_title) or id<TAB>text.
        `expected_sha256` (an ensemble folder's): a corpus whose digest differs is refused before indexing (the
        scores were defined by the old statistics); CorpusChanged carries both digests."""
        import bm25s

        from kd.data import load_passages

        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"BM25 corpus not found: {path}")
        digest = sha256_file(path)  # once per member: the check below and corpus_digest share it
        if expected_sha256 is not None and digest != expected_sha256:
            raise CorpusChanged(digest, expected_sha256)
        texts = list(load_passages(path, use_title=use_title, in_memory=True, show_progress=False).values())
        if not texts:
            raise ValueError(f"{path}: the BM25 corpus holds no passage")
        tok = bm25s.tokenize(texts, lower=True, stopwords=STOPWORDS, stemmer=_stemmer(), return_ids=True,
                             show_progress=False)
        lengths = np.fromiter(map(len, tok.ids), np.int64, len(tok.ids))
        present = [np.unique(np.asarray(ids, dtype=np.int64)) for ids in tok.ids if ids]
        df = np.bincount(np.concatenate(present) if present else np.zeros(0, np.int64), minlength=len(tok.vocab))
        return cls(dict(tok.vocab), df, len(texts), float(lengths.mean()), k1=k1, b=b,
                   corpus=str(path.resolve()), corpus_digest=digest)

    # ------------------------------------------------------------------------------------------------ scoring
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def num_parameters(self, trainable_only: bool = False) -> int:
        return 0

    def tokens(self, texts: Sequence[str]) -> list[list[str]]:
        """bm25s' tokens (stems) of each text, with kd/data/bm25.py's settings."""
        import bm25s

        return bm25s.tokenize(list(texts), lower=True, stopwords=STOPWORDS, stemmer=self._stem, return_ids=False,
                              show_progress=False)

    def score_pairs(self, queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        """float64 scores [B] of aligned pairs (the formula of the module docstring)."""
        _check_pairs(queries, passages)
        out = np.zeros(len(queries), dtype=np.float64)
        for i, (q, p) in enumerate(zip(self.tokens(queries), self.tokens(passages))):
            if not q or not p:
                continue
            tf = Counter(p)
            norm = self.k1 * (1.0 - self.b + self.b * len(p) / self.avgdl)
            total = 0.0
            for t in q:  # with repetition, as bm25s
                j, f = self.vocab.get(t), tf.get(t, 0)
                if j is not None and f:
                    total += self.idf[j] * f / (f + norm)
            out[i] = total
        return out

    def score(self, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
        """Scores [B] (float32, CPU); no gradients (BM25 has no parameters)."""
        return torch.from_numpy(self.score_pairs(queries, passages).astype(np.float32))

    forward = score

    def predict(self, queries: Sequence[str], passages: Sequence[str], batch_size: int = 64,
                show_progress: bool = False) -> torch.Tensor:
        """Scores [N] (float32, CPU) in batches of `batch_size` pairs (a pair's score does not depend on its batch)."""
        _check_pairs(queries, passages)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        progress = Progress("scoring (bm25)", len(queries), unit="pairs", enabled=show_progress)
        out = np.empty(len(queries), dtype=np.float64)
        for start in range(0, len(queries), batch_size):
            end = start + batch_size
            out[start:end] = self.score_pairs(queries[start:end], passages[start:end])
            progress.update(min(end, len(queries)) - start)
        progress.close()
        return torch.from_numpy(out.astype(np.float32))

    def extra_repr(self) -> str:
        return f"corpus={self.corpus!r}, N={self.n_docs}, avgdl={self.avgdl:.2f}, k1={self.k1}, b={self.b}"
