"""Micro-batches built ahead of the step in a background thread.

Why: collating a prepared batch (kd/data/prepared.py) is numpy work that releases the GIL for most of its time;
built one or two batches ahead, the training step never waits for it. Raw-text examples (kd.training.Examples) are
tokenised inside the step anyway, so they are batched inline, as before. Building a batch draws no random numbers,
so the order of batches and the seeds of the steps are unchanged (exact resumption).
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence


def batch_stream(examples, batches: Sequence[Sequence[int]], depth: int = 2) -> Iterator[dict]:
    """`examples.batch(b)` for each b of `batches`, in order; `depth` batches ahead in a thread for examples that
    collate from ids (those with a `collator`). Closing the generator (a loop that stops early) waits for at most
    `depth` batches still being built."""
    if getattr(examples, "collator", None) is None or depth < 1:
        yield from (examples.batch(b) for b in batches)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="kd-prefetch") as pool:
        pending = deque(pool.submit(examples.batch, b) for b in batches[:depth])
        for nxt in range(depth, len(batches) + depth):
            batch = pending.popleft().result()
            if nxt < len(batches):
                pending.append(pool.submit(examples.batch, batches[nxt]))
            yield batch
