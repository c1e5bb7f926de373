"""bench/training.py's inputs: the scored SciFact triples every row trains on, the jobs.distill config of "ours", the
tokens kd's step encodes per triple, and the padding fraction of plain vs length-grouped batches.

Data: SciFact train, BM25 top-100 (kd.data.bm25_beir) -> kd.data.mine_triples(n_negatives=1, seed=0) -> the first K
triples, joined with their text by kd.data.join_triples (the jobs' own id -> text join), scored by the
all-MiniLM-L6-v2 bi-encoder teacher (kd.teachers.load_bi_encoder_teacher) and written with
kd.data.write_teacher_scores. K = 2 x (warmup + steps) x micro batch, enough for the 2-worker run.
"""
from __future__ import annotations

import time
from pathlib import Path


def prepare_data(args, tmp: Path) -> dict:
    """Mine SciFact train triples with BM25, keep the first K, score them with the bi-encoder teacher."""
    from kd.data import bm25_beir, join_triples, load_beir, mine_triples, read_qrels, write_teacher_scores
    from kd.teachers import load_bi_encoder_teacher

    t0 = time.perf_counter()
    scifact = Path(args.data_dir) / "beir" / "scifact"
    run = bm25_beir(scifact, split="train", top_k=100, show_progress=False)
    mined = mine_triples(run, read_qrels(scifact / "qrels" / "train.tsv"), n_negatives=1, top_k=100, seed=0)
    want = 2 * (args.warmup + args.steps) * args.micro_batch  # enough for 2 workers without a second epoch
    triples = mined.triples[: min(want, len(mined.triples))]
    beir = load_beir(scifact, split=None)
    joined = list(join_triples(triples, beir.queries, beir.corpus))
    # one predict call over the p+ pairs then the p- pairs of every triple
    scored = load_bi_encoder_teacher().predict([j.query for j in joined] * 2,
                                               [j.pos for j in joined] + [j.neg for j in joined]).tolist()
    scores = tmp / "teacher_scores.tsv"
    write_teacher_scores(scores, [(a, b, j.qid, j.pos_pid, j.neg_pid)
                                  for a, b, j in zip(scored[: len(joined)], scored[len(joined):], joined)])
    return {
        "scifact": str(scifact), "teacher_scores": str(scores), "mined_triples": len(mined.triples),
        "triples_used": len(triples), "triples_wanted": want, "teacher": "all-MiniLM-L6-v2 bi-encoder (kd)",
        "prepare_seconds": round(time.perf_counter() - t0, 2),
    }


def job_config(args, tmp: Path, data: dict, name: str, workers: int, cpus_per_worker: float) -> dict:
    from kd.models.backbone import default_backbone

    total = args.warmup + args.steps
    return {
        "mode": "score_file",
        "student": {"architecture": "bert_dot", "backbone": default_backbone(),
                    "options": {"pooling": "mean", "max_query_length": args.max_query_length,
                                "max_passage_length": args.max_passage_length}},
        "loss": {"name": "margin_mse"},
        "teacher": {"scores": data["teacher_scores"]},
        "data": {"queries": str(Path(data["scifact"]) / "queries.jsonl"),
                 "passages": str(Path(data["scifact"]) / "corpus.jsonl")},
        "training": {"num_workers": workers, "cpus_per_worker": cpus_per_worker, "use_gpu": args.device == "cuda",
                     "precision": args.precision, "micro_batch_size": args.micro_batch, "epochs": 1,
                     "max_steps": total, "lr": args.lr, "zero_stage": args.zero_stage, "seed": args.seed, "log_every": 1,
                     "checkpoint_every": total, "max_failures": 0, "gradient_clipping": 1.0,
                     "group_by_length": args.group_by_length},
        "registry": {"name": None},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "bench-training", "run_name": name},
        "run": {"name": name, "storage_path": str(tmp / "runs")},
    }


def kd_token_counts(args, examples, batches: list[list[int]]) -> dict:
    """Padded/real tokens per triple that kd's DistillStep encodes: BertDot.score_triples encodes each query once
    and p+ / p- in one batch."""
    from transformers import AutoTokenizer

    from kd.models.backbone import default_backbone
    from kd.models.base import tokenize_texts

    tok = AutoTokenizer.from_pretrained(default_backbone())
    padded = real = n = 0
    for idx in batches:
        b = examples.batch(idx)
        q = tokenize_texts(tok, b["query"], args.max_query_length)["attention_mask"]
        d = tokenize_texts(tok, b["pos"] + b["neg"], args.max_passage_length)["attention_mask"]
        padded += q.numel() + d.numel()
        real += int(q.sum() + d.sum())
        n += len(idx)
    return {"padded_tokens_per_triple": padded / max(n, 1), "real_tokens_per_triple": real / max(n, 1)}


PADDING_WINDOW = 50  # the window the padding comparison groups with when --group-by-length is 0 (HF's largest)


def length_keys(cfg, examples):
    """The kd student of `cfg` and the examples' length key (kd.training.example_lengths), computed once for both
    the training batches and the padding comparison."""
    from kd.training import build_student, example_lengths

    student = build_student(cfg, None)
    return student, example_lengths(examples, student)


def train_batches(args, examples, lengths) -> list[list[int]]:
    """The batches every row trains on: rank 0 of 1 worker's first epoch (kd.training.rank_batches), grouped by
    length when --group-by-length W > 0 (the job's own training.group_by_length, the same token-count key)."""
    from kd.training import rank_batches

    return rank_batches(len(examples), 0, args.seed, 0, 1, args.micro_batch,
                        lengths if args.group_by_length else None, args.group_by_length)


def padding_fractions(args, student, examples, lengths) -> dict:
    """Pad tokens / all tokens (kd.training.padding_fraction: the kd student's own tokenization and max lengths)
    over every micro-batch of the epoch, plain (before) vs grouped by length (after, window --group-by-length, or
    PADDING_WINDOW when it is 0). The epoch is the bench's own triples: a window at least as long as the epoch
    sorts all of them, so a larger data set with the same window pads more than this."""
    from kd.training import padding_fraction, rank_batches

    window = args.group_by_length or PADDING_WINDOW
    plain = rank_batches(len(examples), 0, args.seed, 0, 1, args.micro_batch)
    grouped = rank_batches(len(examples), 0, args.seed, 0, 1, args.micro_batch, lengths, window)
    return {"window": window, "length_key": "kd.training.example_lengths (student token counts, truncated)",
            "examples": len(examples), "micro_batches": len(plain), "micro_batch": args.micro_batch,
            "padding_fraction_before": padding_fraction(student, examples, plain),
            "padding_fraction_after": padding_fraction(student, examples, grouped)}
