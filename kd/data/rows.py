"""The training rows of a distill (or prepare) config: teacher-score lines or id triples joined with their text,
and the queries a config excludes. One module so that `kd.training.load_examples` (the raw path, every worker) and
`kd.data.prepared` (the prepare step, once) read the same files through the same readers and the same join, and
count the same skips.

`cfg` is any config with `mode`, `data` (kd.configs.distill.TrainDataConfig) and `teacher.scores`: the distill
config, or the prepare config (kd.configs.prepare), which reuses those sections.
"""
from __future__ import annotations

from typing import Iterator

from kd.data import load_passages, load_queries, read_qrels
from kd.data.join import JoinedTriple, JoinStats, join_teacher_scores, join_triples


def excluded_queries(cfg) -> set[str]:
    """The query ids of data.exclude_query_ids_from (a qrels file), never trained on."""
    path = cfg.data.exclude_query_ids_from
    return set(read_qrels(path)) if path else set()


def joined_rows(cfg, stats: JoinStats) -> Iterator[JoinedTriple]:
    """Teacher-score lines (score_file) or id triples joined with their text, read by the validated per-line readers
    (a bad line, a non-finite score or an unknown id raises FormatError naming the file and line in strict mode;
    lenient mode counts it in `stats`)."""
    d = cfg.data
    queries = load_queries(d.queries, strict=d.strict)
    passages = load_passages(d.passages, strict=d.strict, use_title=d.use_title, show_progress=False)
    if cfg.mode == "score_file":
        return join_teacher_scores(cfg.teacher.scores, queries, passages, strict=d.strict, stats=stats,
                                   use_title=d.use_title)
    return join_triples(d.triples, queries, passages, strict=d.strict, stats=stats, use_title=d.use_title)


def join_stats(stats: JoinStats, excluded: int) -> dict:
    """The counts a join reports (examples' stats, the prepared manifest's `join`): skips are never silent."""
    return {"rows": stats.rows, "joined": stats.joined, "skipped": stats.skipped,
            "missing_query": stats.missing_query, "missing_passage": stats.missing_passage,
            "duplicates": stats.duplicates, "excluded_queries": excluded}
