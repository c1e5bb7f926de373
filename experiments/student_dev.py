"""The quickstart student's choices on development data: layers and `loss.student_scale`, KD vs its no-KD twin.

    python experiments/student_dev.py --scores outputs/quickstart/scores/teacher_scores.tsv \
        [--layers 2 3] [--scales 1 5 10] [--json docs/student_dev.json]

Trains the quickstart's BERT_DOT student (a top-bottom layer subset of all-MiniLM-L6-v2, mean pooling + L2 norm)
on the quickstart's teacher file, in-process (no Ray: the same examples, seeded batches, step, warm-up/linear decay
and gradient clipping as the Ray worker, plain AdamW instead of DeepSpeed's), once with Margin-MSE and once with
RankNet (the no-KD twin), for each (layers, scale), and re-ranks SciFact dev — the 50 train claims held out of
mining, BM25 top-20 over the full corpus. Never SciFact test or DL'19: this table chose the quickstart's
`student_scale` (the best KD student). Run the quickstart's mine and score stages first for the teacher file.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from kd.configs import DistillConfig
from kd.configs.catalog import resources_dir
from kd.training import DistillStep, Validator, build_student, load_examples, rank_batches


def config(args, layers: int, scale: float, loss: str) -> DistillConfig:
    beir = Path(args.beir)
    corpus = str(beir / "corpus.jsonl.gz")
    return DistillConfig.model_validate({
        "run": {"name": "student-dev", "storage_path": "/tmp/kd-student-dev"}, "mode": "score_file",
        "student": {"architecture": "bert_dot", "init": {"layers": "top-bottom", "num_layers": layers},
                    "options": {"max_query_length": 30, "max_passage_length": args.max_passage_length}},
        "loss": {"name": loss, "student_scale": scale}, "teacher": {"scores": args.scores},
        "data": {"queries": str(beir / "queries.jsonl"), "passages": corpus},
        "validation": {"run": str(beir / "runs" / "bm25.dev.trec"), "qrels": str(beir / "qrels" / "dev.tsv"),
                       "queries": str(beir / "queries.jsonl"), "passages": corpus, "top_k": args.dev_top_k,
                       "max_queries": 50, "relevance_level": 1},
        "training": {"micro_batch_size": args.micro_batch, "epochs": 1, "lr": args.lr, "warmup_ratio": 0.1,
                     "seed": args.seed},
        "mlflow": {"enabled": False},
    })


def train_and_validate(cfg: DistillConfig) -> dict:
    """One student: train 1 epoch as the worker does, then nDCG@10 / MRR@10 on the dev re-ranking."""
    t = cfg.training
    torch.manual_seed(t.seed)
    examples = load_examples(cfg)
    student = build_student(cfg, None)
    step = DistillStep.from_config(cfg, student)
    batches = rank_batches(len(examples), 0, t.seed, 0, 1, t.micro_batch_size)
    opt = torch.optim.AdamW([p for p in step.parameters() if p.requires_grad], lr=t.lr, weight_decay=0.0)
    warm = max(1, int(t.warmup_ratio * len(batches)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (len(batches) - s) / max(1, len(batches) - warm))))
    start = time.perf_counter()
    student.train()
    for b in batches:
        loss = step(examples.batch(b))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(step.parameters(), 1.0)
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    student.eval()
    validator = Validator(cfg)
    with torch.inference_mode():
        metrics = validator.metrics(validator.partial_run(lambda q, p: student.predict(q, p, batch_size=64)))
    return {"steps": len(batches), "train_seconds": round(seconds, 1), **metrics}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scores", required=True, help="the quickstart's teacher file (scores/teacher_scores.tsv)")
    ap.add_argument("--beir", default=str(resources_dir() / "quickstart" / "scifact"))
    ap.add_argument("--layers", type=int, nargs="+", default=[2])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 5.0, 10.0])
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--max-passage-length", type=int, default=128)
    ap.add_argument("--dev-top-k", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the table here")
    args = ap.parse_args(argv)
    rows = []
    print("| layers | student_scale | loss | nDCG@10 | MRR@10 | steps | train s |\n|---|---|---|---|---|---|---|")
    for layers in args.layers:
        for scale in args.scales:
            for loss in ("margin_mse", "ranknet"):
                r = {"layers": layers, "student_scale": scale, "loss": loss,
                     **train_and_validate(config(args, layers, scale, loss))}
                rows.append(r)
                print(f"| {layers} | {scale:g} | {loss} | {r['ndcg_at_10']:.4f} | {r['mrr_at_10']:.4f} | "
                      f"{r['steps']} | {r['train_seconds']:.0f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"dev": str(Path(args.beir) / "qrels" / "dev.tsv"),
                                               "args": vars(args), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
