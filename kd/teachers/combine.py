"""How an ensemble's members' scores become one teacher score: the raw mean, or a standardised (z-score) mean.

    mean:   t = Σ_m w_m s_m / Σ_m w_m                      (the paper's T2 when every w_m = 1)
    zscore: t = Σ_m w_m (s_m − μ_m) / σ_m / Σ_m w_m

Members of different kinds do not share a scale (BM25 ≈ 5–40, a cosine in [−1, 1], cross-encoder logits ≈ ±10), so
a raw mean is mostly its widest member; z-scores put each member on one scale first. μ_m and σ_m are member m's mean
and population standard deviation over ALL its scores of the scored set (positive and negative of every triple),
fitted once (`Combination.fit`) and stored with the output (`to_dict`), so the combination is a fixed function: the
same member scores give the same bytes, and a rerun or a recombination reproduces it exactly. Everything is float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

METHODS = ("mean", "zscore")
_KEYS = ("method", "names", "weights", "means", "stds")


@dataclass(frozen=True)
class Combination:
    method: str
    names: tuple[str, ...]
    weights: tuple[float, ...]
    means: tuple[float, ...] | None = None
    stds: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"combination method must be one of {list(METHODS)}, got {self.method!r}")
        names = tuple(str(n) for n in self.names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a combination needs one distinct name per member, got {list(names)}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "weights", _floats("weights", self.weights, names))
        for name, w in zip(names, self.weights):
            if not w > 0:
                raise ValueError(f"teacher {name!r}: weight must be > 0, got {w!r}")
        if self.method == "zscore":
            if self.means is None or self.stds is None:
                raise ValueError("a zscore combination needs each member's mean and std (use Combination.fit)")
            object.__setattr__(self, "means", _floats("means", self.means, names))
            object.__setattr__(self, "stds", _floats("stds", self.stds, names))
            for name, sd in zip(names, self.stds):
                if not sd > 0:
                    raise ValueError(f"teacher {name!r}: std must be > 0, got {sd!r}")
        elif self.means is not None or self.stds is not None:
            raise ValueError("means/stds belong to a zscore combination only")

    @classmethod
    def fit(cls, method: str, names: Sequence[str], member_scores, weights: Sequence[float] | None = None
            ) -> "Combination":
        """The combination of `method` for member scores [M, N] (every score of the scored set, each row one member
        in `names` order); weights default to 1. A member whose scores are all equal cannot be standardised."""
        names = tuple(names)
        s = _as_float64(member_scores)
        if s.ndim != 2 or s.shape[0] != len(names) or s.shape[1] == 0:
            raise ValueError(f"member scores must be [M={len(names)}, N>0], got shape {tuple(s.shape)}")
        for name, row in zip(names, s):
            bad = int((~np.isfinite(row)).sum())
            if bad:
                raise ValueError(f"teacher {name!r}: {bad} of its {row.size} scores are not finite")
        weights = tuple(weights) if weights is not None else (1.0,) * len(names)
        if method != "zscore":
            return cls(method, names, weights)
        means, stds = s.mean(axis=1), s.std(axis=1)  # population std (ddof 0)
        for name, mu, sd in zip(names, means, stds):
            if not sd > 0:
                raise ValueError(f"teacher {name!r} gives all {s.shape[1]} scored pairs the same score ({mu!r}): "
                                 "its scores cannot be standardised (zscore); drop it or use combine: mean")
        return cls(method, names, weights, tuple(means.tolist()), tuple(stds.tolist()))

    def __call__(self, member_scores):
        """Combined scores [N] for member scores [M, N] (numpy → float64 numpy; torch → float64 torch, same device)."""
        if _is_tensor(member_scores):
            import torch

            s = member_scores.to(torch.float64)
            w = torch.tensor(self.weights, dtype=torch.float64, device=s.device)
            if self.method == "zscore":
                mu = torch.tensor(self.means, dtype=torch.float64, device=s.device)
                sd = torch.tensor(self.stds, dtype=torch.float64, device=s.device)
                s = (s - mu[:, None]) / sd[:, None]
        else:
            s = _as_float64(member_scores)
            w = np.asarray(self.weights, dtype=np.float64)
            if self.method == "zscore":
                s = (s - np.asarray(self.means)[:, None]) / np.asarray(self.stds)[:, None]
        if s.ndim != 2 or s.shape[0] != len(self.names):
            raise ValueError(f"member scores must be [M={len(self.names)}, N] in {list(self.names)} order, got "
                             f"shape {tuple(s.shape)}")
        return (w[:, None] * s).sum(0) / w.sum()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe; `Combination.from_dict(json.loads(json.dumps(c.to_dict())))` == c (floats round-trip)."""
        return {"method": self.method, "names": list(self.names), "weights": list(self.weights),
                "means": None if self.means is None else list(self.means),
                "stds": None if self.stds is None else list(self.stds)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Combination":
        unknown, missing = sorted(set(d) - set(_KEYS)), sorted(set(_KEYS[:3]) - set(d))
        if unknown or missing:
            raise ValueError(f"not a combination: unknown keys {unknown}, missing {missing}")
        return cls(d["method"], tuple(d["names"]), tuple(d["weights"]),
                   None if d.get("means") is None else tuple(d["means"]),
                   None if d.get("stds") is None else tuple(d["stds"]))

    def params(self) -> dict[str, str]:
        """Flat string params (MLflow): combination.method and each member's weight (and mean, std for zscore),
        floats as repr so they read back exactly."""
        out = {"combination.method": self.method}
        for i, name in enumerate(self.names):
            out[f"combination.{name}.weight"] = repr(self.weights[i])
            if self.method == "zscore":
                out[f"combination.{name}.mean"] = repr(self.means[i])
                out[f"combination.{name}.std"] = repr(self.stds[i])
        return out

    def describe(self) -> str:
        """One line: "zscore (a ×1, bm25 ×0.5)"."""
        return f"{self.method} ({', '.join(f'{n} ×{w:g}' for n, w in zip(self.names, self.weights))})"


def _floats(what: str, values: Sequence[float], names: tuple[str, ...]) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) != len(names):
        raise ValueError(f"{len(values)} {what} for {len(names)} members {list(names)}")
    for name, v in zip(names, values):
        if not math.isfinite(v):
            raise ValueError(f"teacher {name!r}: {what[:-1]} must be finite, got {v!r}")
    return values


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch")


def _as_float64(x) -> np.ndarray:
    if _is_tensor(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)
