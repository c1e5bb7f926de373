"""Reading a prepared training folder (written by jobs.prepare, kd/data/prepared_write.py): memory-mapped examples
for the distill workers (`data.prepared` in the distill config), and the driver's check of the folder against the
config before Ray starts.

Why memory-mapped: `np.load(..., mmap_mode="r")` maps the arrays instead of reading them, so a worker's memory does
not grow with the number of triples or passages (the page cache holds one copy per node, shared by its workers),
and a restarted worker is ready in well under a second instead of re-joining the teacher file.

A folder is refused — ConfigError naming `data.prepared`, the folder and the manifest field — when it is not a
complete prepared folder (no manifest, another format version, an array of the wrong shape), when it was prepared
for another mode, when a source file the config also names differs from the one it was prepared from (size and
sha256), or when the student's tokenizer (vocabulary digest) or max lengths need word pieces the folder does not
keep (kd/data/collate.py `side_caps`). Precedence: with `data.prepared`, the folder's examples are used; the raw
files (teacher.scores, data.triples/queries/passages, data.exclude_query_ids_from) may still be named, and then
must be the files it was prepared from. `data.max_examples` cuts the folder's examples to the first n (as on the
raw path).
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from kd.configs.errors import ConfigError
from kd.data.collate import PAIR, NotCollatable, Specials, TokenTable, TripleCollator, side_caps
from kd.data.prepared_write import FORMAT_VERSION, MANIFEST, SOURCE_FIELDS, file_source, source_paths, tokenizer_digest

FIELD = "data.prepared"
PREPARED_MODES = ("score_file", "supervised")


def _refuse(folder, what: str) -> ConfigError:
    return ConfigError(f"field {FIELD}: {folder}: {what}")


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise _refuse(folder, f"no {MANIFEST}: not a complete prepared folder (run jobs.prepare)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise _refuse(folder, f"{MANIFEST}:{e.lineno}: not valid JSON ({e.msg})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _refuse(folder, f"manifest field format_version is {manifest.get('format_version')!r}, this version "
                              f"reads {FORMAT_VERSION}: prepare it again")
    return manifest


def open_arrays(folder: str | Path, manifest: dict) -> dict[str, np.ndarray]:
    """Every array of the folder memory-mapped (never unpickled), each checked against the manifest's shape."""
    arrays = {}
    for name, spec in manifest["files"].items():
        path = Path(folder) / f"{name}.npy"
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise _refuse(folder, f"{path.name}: {e}") from None
        if list(arr.shape) != spec["shape"] or str(arr.dtype) != spec["dtype"]:
            raise _refuse(folder, f"{path.name} is {arr.dtype}{list(arr.shape)}, manifest field files.{name} says "
                                  f"{spec['dtype']}{spec['shape']}")
        arrays[name] = arr
    return arrays


def table(arrays: dict, side: str) -> TokenTable:
    return TokenTable(arrays[f"{side}.ids"], arrays[f"{side}.offsets"], arrays[f"{side}.lengths"])


# ------------------------------------------------------------------------------------------------ the checks
def check_sources(cfg, folder, manifest: dict) -> None:
    """A raw file the distill config also names must be the one the folder was prepared from."""
    recorded = manifest["sources"]
    for role, path in source_paths(cfg).items():
        where = f"field {SOURCE_FIELDS[role]} ({path})"
        if role not in recorded:
            raise _refuse(folder, f"manifest field sources has no {role!r}: it was not prepared from {where}")
        old, size = recorded[role], Path(path).expanduser().stat().st_size
        if size != old["size"]:
            raise _refuse(folder, f"manifest field sources.{role}.size is {old['size']}, {where} has {size} bytes: "
                                  "the file changed since it was prepared; prepare again")
        new = file_source(path)["sha256"]
        if new != old["sha256"]:
            raise _refuse(folder, f"manifest field sources.{role}.sha256 is {old['sha256'][:12]}…, {where} has "
                                  f"{new[:12]}…: the file changed since it was prepared; prepare again")


def check_student(folder, manifest: dict, architecture: str, options: dict, tokenizer) -> None:
    """The student's tokenizer must be the folder's and its max lengths must need no more word pieces than the
    folder keeps; its tokenizer's special-token template must be collatable."""
    try:
        caps = side_caps(architecture, options, Specials.of(tokenizer))
    except NotCollatable as e:
        raise _refuse(folder, f"student {architecture!r} cannot train from token ids: {e}") from None
    digest = tokenizer_digest(tokenizer)
    if digest != manifest["tokenizer"]["digest"]:
        raise _refuse(folder, f"manifest field tokenizer.digest ({manifest['tokenizer']['name']}, "
                              f"{manifest['tokenizer']['digest'][:12]}…) is not the student's tokenizer "
                              f"({digest[:12]}…, {len(tokenizer)} tokens)")
    why = "joint longest_first truncation can give either side the whole pair budget" if architecture in PAIR else \
        "its max length minus its special tokens"
    for name, need in zip(("max_query_length", "max_passage_length"), caps):
        if manifest[name] < need:
            raise _refuse(folder, f"manifest field {name} is {manifest[name]} word pieces, student {architecture!r} "
                                  f"with options {options} needs {need} ({why}): prepare with {name} ≥ {need}")


def student_spec(cfg) -> tuple[str, dict, str] | None:
    """(architecture, options with defaults, tokenizer source) of the student a distill config builds, known
    without loading weights; None where only the built student tells (a teacher_layers copy of a hub model)."""
    from kd.models import backbone as bb
    from kd.models import get_model_class

    s, strategy = cfg.student, cfg.student.init.strategy
    if strategy == "teacher_layers":
        saved = Path(bb.resolve(cfg.teacher.model)) / "kd_config.json"
        if not saved.is_file():
            return None
        spec = json.loads(saved.read_text())
        return spec["architecture"], spec["options"], cfg.teacher.model
    arch = "bert_dot" if strategy == "other_model" else s.architecture
    params = inspect.signature(get_model_class(arch).__init__).parameters.values()
    defaults = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}
    return arch, {**defaults, **s.options}, s.backbone


def _check_mode(cfg, folder, manifest: dict) -> None:
    if cfg.mode not in PREPARED_MODES:
        raise _refuse(folder, f"mode {cfg.mode!r} trains on the raw path only (prepared: {PREPARED_MODES})")
    if manifest["mode"] != cfg.mode:
        raise _refuse(folder, f"manifest field mode is {manifest['mode']!r}, the config's mode is {cfg.mode!r}")


def check_prepared(cfg) -> dict:
    """The driver's check of `data.prepared` before Ray (kd.training.check_examples): the folder, its sources, the
    student's tokenizer and lengths. Returns the counts the workers' examples will report."""
    from transformers import AutoTokenizer

    from kd.models import backbone as bb

    folder = cfg.data.prepared
    manifest = read_manifest(folder)
    _check_mode(cfg, folder, manifest)
    arrays = open_arrays(folder, manifest)
    check_sources(cfg, folder, manifest)
    spec = student_spec(cfg)
    if spec is not None:
        arch, options, source = spec
        check_student(folder, manifest, arch, options, AutoTokenizer.from_pretrained(bb.resolve(source)))
    return _stats(cfg, manifest, len(arrays["query_row"]))


def _stats(cfg, manifest: dict, n: int) -> dict:
    stats = {**manifest["join"], "prepared": str(cfg.data.prepared)}
    cap = cfg.data.max_examples
    if cap is not None and n > cap:
        stats["truncated_to"], n = cap, cap
    stats["examples"] = n
    return stats


# ---------------------------------------------------------------------------------------------- the examples
class PreparedExamples:
    """Training examples over a prepared folder's memory-mapped arrays; `batch(idx)` collates one micro-batch of
    triples for the student (kd/data/collate.py) plus its teacher scores. The interface of kd.training.Examples
    that the worker uses (len, batch, stats)."""

    def __init__(self, folder, arrays: dict, collator: TripleCollator, n: int, stats: dict):
        self.folder, self.arrays, self.collator, self.n, self.stats = folder, arrays, collator, n, stats
        self.scores = "t_pos" in arrays

    def __len__(self) -> int:
        return self.n

    def batch(self, idx: Sequence[int]) -> dict:
        i = np.asarray(idx, dtype=np.int64)
        a = self.arrays
        out = {"features": self.collator.triples(a["query_row"][i], a["pos_row"][i], a["neg_row"][i])}
        if self.scores:
            out["t_pos"] = torch.from_numpy(np.array(a["t_pos"][i], dtype=np.float32))
            out["t_neg"] = torch.from_numpy(np.array(a["t_neg"][i], dtype=np.float32))
        return out

    def lengths(self, q_max: int, p_max: int, specials: int) -> np.ndarray:
        """kd.training.example_lengths's key from the stored full counts: min(count + special tokens, max) of the
        query plus that of the longer passage."""
        a = self.arrays
        side = lambda side, rows, cap: np.minimum(a[f"{side}.lengths"][rows].astype(np.int64) + specials, cap)  # noqa: E731
        q, p, n = a["query_row"][: self.n], a["pos_row"][: self.n], a["neg_row"][: self.n]
        return side("queries", q, q_max) + np.maximum(side("passages", p, p_max), side("passages", n, p_max))


def load_prepared(cfg, student) -> PreparedExamples:
    """A worker's examples: the folder memory-mapped and checked against the student actually built."""
    folder = cfg.data.prepared
    manifest = read_manifest(folder)
    _check_mode(cfg, folder, manifest)
    arrays = open_arrays(folder, manifest)
    check_student(folder, manifest, student.architecture, student.options, student.tokenizer)
    collator = TripleCollator(student.architecture, student.options, student.tokenizer, table(arrays, "queries"),
                              table(arrays, "passages"))
    stats = _stats(cfg, manifest, len(arrays["query_row"]))
    return PreparedExamples(folder, arrays, collator, stats["examples"], stats)
