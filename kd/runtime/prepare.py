"""jobs/prepare.py runtime: join on the driver (the same readers as training), tokenise the distinct queries and
passages once on a Ray Data actor pool (every node's CPUs), write the folder atomically (kd/data/prepared_write.py).

Why Ray Data: tokenising millions of passages is the expensive part of a prepare and is embarrassingly parallel;
each actor loads the tokenizer once. The rows carry their index, so the order the batches come back in does not
matter. The join stays on the driver: it is the readers' and the join's own code (file and line in every error),
and a prepare runs once per data set instead of once per worker and restart.
"""
from __future__ import annotations

import logging

import numpy as np

from kd.configs.prepare import PrepareConfig

logger = logging.getLogger(__name__)


class TokenizeActor:
    """A Ray Data actor: one tokenizer, batches of (row, text) → (row, full length, capped word pieces)."""

    def __init__(self, tokenizer: str, cap: int):
        from transformers import AutoTokenizer

        from kd.models import backbone as bb

        self.tokenizer = AutoTokenizer.from_pretrained(bb.resolve(tokenizer))
        self.tokenizer.model_max_length = 1 << 30  # counts of long texts are wanted, not a warning per text
        self.cap = cap

    def __call__(self, batch: dict) -> dict:
        import pyarrow as pa

        from kd.data.prepared_write import tokenize_batch

        lengths, pieces = tokenize_batch(self.tokenizer, list(batch["text"]), self.cap)
        offsets = np.zeros(len(pieces) + 1, np.int32)
        np.cumsum([len(p) for p in pieces], out=offsets[1:])
        flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
        return pa.table({"row": np.asarray(batch["row"], np.int64), "length": lengths,
                         "ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32()))})


def tokenize_on_ray(texts: list[str], cfg: PrepareConfig, cap: int, what: str) -> dict[str, np.ndarray]:
    """The packed token table (kd.data.prepared_write.pack) of `texts`, rows in the order of `texts`."""
    import pyarrow as pa
    import ray

    from kd.data.prepared_write import pack
    from kd.progress import Progress

    table = pa.table({"row": pa.array(np.arange(len(texts)), pa.int64()), "text": pa.array(texts, pa.string())})
    ds = ray.data.from_arrow(table).map_batches(
        TokenizeActor, fn_constructor_kwargs={"tokenizer": cfg.tokenizer, "cap": cap}, batch_size=cfg.batch_size,
        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=cfg.num_actors), num_cpus=cfg.cpus_per_actor)
    rows, lengths, pieces = [], [], []
    progress = Progress(f"tokenising {what}", len(texts), unit="texts")
    for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows.append(b["row"].to_numpy())
        lengths.append(b["length"].to_numpy())
        ids = b["ids"].combine_chunks()
        flat, offs = ids.flatten().to_numpy(zero_copy_only=False), ids.offsets.to_numpy()
        pieces += [flat[offs[i] - offs[0] : offs[i + 1] - offs[0]] for i in range(len(ids))]
        progress.update(len(b))
    progress.close()
    order = np.argsort(np.concatenate(rows), kind="stable")
    if len(order) != len(texts):
        raise RuntimeError(f"tokenising {what}: {len(order)} of {len(texts)} rows came back")
    return pack(np.concatenate(lengths)[order], [pieces[i] for i in order])


def prepare(cfg: PrepareConfig) -> dict:
    """Run a prepare (kd.data.prepared_write.prepare_folder) with the texts tokenised on Ray Data; Ray starts only
    after the join has read and checked every input line."""
    from kd.data.prepared_write import prepare_folder
    from kd.runtime.cluster import ensure_ray
    from kd.runtime.progress import quiet_ray_data

    def tokenize(texts: list[str], cap: int, what: str) -> dict[str, np.ndarray]:
        ensure_ray()
        quiet_ray_data()
        return tokenize_on_ray(texts, cfg, cap, what)

    return prepare_folder(cfg, tokenize)
