"""Prepared training data (jobs.prepare → data.prepared): collation from token ids equals each student's own
`tokenize`, the folder holds the same examples as the raw path, mismatches and bad input are refused by name, and a
real jobs.distill run trains to the same losses from a prepared folder as from the raw files.

Real parts only: the packaged all-MiniLM-L6-v2 tokenizer and weights, SciFact's claims and abstracts, a real Ray
head for the prepare job (Ray Data) and the distill job (Ray Train + DeepSpeed).
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kd.configs.distill import DistillConfig
from kd.configs.errors import ConfigError
from kd.data import load_beir, read_qrels, write_teacher_scores
from kd.data.collate import Specials, TokenTable, TripleCollator, longest_first, side_caps
from kd.data.prepared_write import pack, tokenize_batch
from kd.models import get_model_class

REPO = Path(__file__).resolve().parents[1]

# each architecture with the options it is trained with and tighter ones (truncation of both sides)
STUDENTS = [
    ("bert_cat", {"max_query_length": 30, "max_passage_length": 200}),
    ("bert_cat", {"max_query_length": 6, "max_passage_length": 9}),  # odd pair budget: longest_first's split
    ("tinybert_cat", {"max_length": 64}),
    ("hf_cross_encoder", {"max_length": 33}),
    ("bert_dot", {"max_query_length": 30, "max_passage_length": 200}),
    ("colbert", {"max_query_length": 12, "max_passage_length": 40}),
    ("colbert", {"max_query_length": 12, "max_passage_length": 40, "n_mask_tokens": 0}),
    ("prettr", {"max_query_length": 30, "max_passage_length": 50}),
    ("tk", {"max_query_length": 30, "max_passage_length": 50}),
]


@pytest.fixture(scope="module")
def scifact(shared_data):
    return shared_data / "beir" / "scifact"


@pytest.fixture(scope="module")
def texts(scifact):
    """Real claims and abstracts (title + text, as training joins them), plus the edge cases: empty texts and
    texts far longer than any max length."""
    beir = load_beir(scifact, split=None)
    docs = beir.texts()
    qs = [beir.queries[q] for q in sorted(beir.queries)[:120]] + ["", "x " * 300]
    ps = [docs[d] for d in sorted(docs)[:160]] + ["", "y z " * 400]
    return qs, ps


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def _table(tokenizer, texts, cap) -> TokenTable:
    lengths, pieces = tokenize_batch(tokenizer, texts, cap)
    return TokenTable(**pack(lengths, pieces))


def test_longest_first_is_the_tokenizers_rule(tokenizer):
    """The pair truncation the collator computes from two full lengths is what the tokenizer does, for every pair of
    lengths around the budget (odd and even budgets, either side longer)."""
    word = tokenizer("the", add_special_tokens=False)["input_ids"]
    assert len(word) == 1
    for max_length in (8, 9, 14):
        budget = max_length - 3
        for n1 in range(0, 16):
            for n2 in range(0, 16):
                q, p = " ".join(["the"] * n1), " ".join(["the"] * n2)
                enc = tokenizer([q], [p], truncation="longest_first", max_length=max_length)["token_type_ids"][0]
                got = (enc.count(0) - 2, enc.count(1) - 1)
                assert longest_first(n1, n2, budget) == got, (max_length, n1, n2)


@pytest.mark.parametrize("arch,options", STUDENTS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(STUDENTS)])
def test_collation_from_ids_equals_the_students_tokenize(arch, options, texts, tokenizer, minilm_path):
    """Every key, dtype and value of `student.tokenize(queries, passages)`, built from word pieces kept at the
    student's caps (side_caps), on real text, truncated abstracts, empty and over-long texts."""
    qs, ps = texts
    student = get_model_class(arch).from_backbone(minilm_path, **options)
    q_cap, p_cap = side_caps(arch, student.options, Specials.of(tokenizer))
    collator = TripleCollator(arch, student.options, student.tokenizer, _table(tokenizer, qs, q_cap),
                              _table(tokenizer, ps, p_cap))
    rng = random.Random(0)
    cases = [([len(qs) - 2] * 3, [len(ps) - 2] * 3), ([len(qs) - 1] * 2, [len(ps) - 1] * 2)]  # empty, over-long
    cases += [([rng.randrange(len(qs)) for _ in range(b)], [rng.randrange(len(ps)) for _ in range(b)])
              for b in (1, 4, 16, 16, 32)]
    truncated = 0
    for q_rows, p_rows in cases:
        want = student.tokenize([qs[i] for i in q_rows], [ps[i] for i in p_rows])
        got = collator.inputs(q_rows, p_rows)
        assert list(got) == list(want)
        for key in want:
            assert got[key].dtype == want[key].dtype, key
            assert torch.equal(got[key], want[key]), (key, got[key].shape, want[key].shape)
        truncated += int(collator.p.lengths[p_rows].max() > p_cap)
    assert truncated >= 3  # long passages were cut in most batches


# ----------------------------------------------------------------------------------------------- the data
@pytest.fixture(scope="module")
def raw(tmp_path_factory, scifact):
    """80 teacher-score lines over real SciFact ids (a relevant abstract vs a seeded random one), one line with an
    unknown passage id and one duplicate (lenient mode counts both), written in the published format."""
    root = tmp_path_factory.mktemp("prepared")
    qrels = read_qrels(scifact / "qrels" / "train.tsv")
    docs = sorted(json.loads(line)["_id"] for line in (scifact / "corpus.jsonl").open())
    rng = random.Random(3)
    rows = []
    for qid in sorted(qrels)[:80]:
        pos = sorted(qrels[qid])[0]
        rows.append((round(rng.uniform(2, 9), 3), round(rng.uniform(-3, 2), 3), qid, pos, rng.choice(docs)))
    rows.append((1.0, 0.5, rows[0][2], "no-such-passage", rows[0][4]))
    rows.append(rows[5])
    write_teacher_scores(root / "teacher.tsv", rows)
    return {"root": root, "scores": root / "teacher.tsv", "queries": scifact / "queries.jsonl",
            "passages": scifact / "corpus.jsonl", "rows": rows}


def _prepare_yaml(raw, name: str, q_cap: int, p_cap: int, strict: bool = False, **extra) -> Path:
    cfg = {"mode": "score_file", "teacher": {"scores": str(raw["scores"])},
           "data": {"queries": str(raw["queries"]), "passages": str(raw["passages"]), "strict": strict},
           "max_query_length": q_cap, "max_passage_length": p_cap, "output": str(raw["root"] / name),
           "batch_size": 64, **extra}
    path = raw["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(module: str, config: Path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, "--config", str(config)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def prepared(raw):
    """The prepare step's own code (kd.data.prepared_write.prepare_folder) with the texts tokenised in-process; the
    job's Ray Data tokenisation is checked to write the identical folder (test_the_job_on_ray_...). Caps 230 / 230
    serve every student of this file's distill configs."""
    from kd.configs.loader import load_config
    from kd.configs.prepare import PrepareConfig
    from kd.data.prepared_write import prepare_folder, tokenize_local

    cfg = load_config(PrepareConfig, _prepare_yaml(raw, "folder", 230, 230), [])
    manifest = prepare_folder(cfg, tokenize_local(cfg.tokenizer, batch_size=50))
    assert manifest["counts"]["triples"] == 81
    return Path(manifest["folder"])


def _distill_cfg(raw, arch="bert_dot", options=None, **data) -> DistillConfig:
    d = {"queries": str(raw["queries"]), "passages": str(raw["passages"]), "strict": False}
    return DistillConfig.model_validate({
        "mode": "score_file", "student": {"architecture": arch, "options": options or {}},
        "loss": {"name": "margin_mse"}, "teacher": {"scores": str(raw["scores"])},
        "data": {**d, **data}, "run": {"name": "prepared-test", "storage_path": str(raw["root"] / "runs")}})


def test_manifest_records_sources_tokenizer_lengths_and_skips(prepared, raw, tokenizer):
    from kd.data.prepared_write import sha256_file, tokenizer_digest

    m = json.loads((prepared / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["mode"] == "score_file"
    assert m["sources"]["scores"]["sha256"] == sha256_file(raw["scores"])
    assert m["sources"]["passages"]["size"] == raw["passages"].stat().st_size
    assert m["tokenizer"]["digest"] == tokenizer_digest(tokenizer)
    assert (m["max_query_length"], m["max_passage_length"]) == (230, 230)
    j = m["join"]
    assert (j["rows"], j["joined"], j["skipped"], j["missing_passage"], j["duplicates"]) == (82, 81, 1, 1, 1)
    assert m["counts"]["triples"] == 81 and m["counts"]["queries"] == 80
    assert not list(raw["root"].glob(".folder.tmp-*"))  # the temporary folder was renamed into place


def test_prepared_folder_holds_the_raw_paths_examples(prepared, raw, tokenizer):
    """Row by row: the texts load_examples joins ↔ the ids and word pieces of the folder; the same teacher scores
    (as float32, what a batch holds) and the same counts from the driver's check."""
    from kd.training import check_examples, load_examples

    cfg = _distill_cfg(raw)
    ex = load_examples(cfg)
    a = {p.stem: np.load(p, allow_pickle=False) for p in prepared.glob("*.npy")}
    assert len(a["query_row"]) == len(ex) == 81
    for side, texts, rows in (("queries", ex.query, a["query_row"]), ("passages", ex.pos, a["pos_row"]),
                              ("passages", ex.neg, a["neg_row"])):
        table = TokenTable(a[f"{side}.ids"], a[f"{side}.offsets"], a[f"{side}.lengths"])
        for text, row in zip(texts, rows):
            want = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert table.lengths[row] == len(want)
            assert table.tokens(row, 230).tolist() == want[:230]
    assert np.array_equal(a["t_pos"], ex.t_pos.astype(np.float32)) and a["t_pos"].dtype == np.float32
    assert np.array_equal(a["t_neg"], ex.t_neg.astype(np.float32))
    beir = load_beir(raw["queries"].parent, split=None)
    assert [beir.queries[i.decode()] for i in a["query_ids"][a["query_row"]]] == ex.query
    checked = check_examples(_distill_cfg(raw, prepared=str(prepared)))
    assert checked == {**ex.stats, "prepared": str(prepared)}


def test_prepared_batches_are_the_raw_batches_tokenised(prepared, raw, minilm_path):
    """What a worker's step receives: the collated batch scores exactly like the text batch (bert_cat pairs and
    the bert_dot dual path), teacher scores included."""
    from kd.data.collate import score_collated
    from kd.training import example_lengths, load_examples

    for arch in ("bert_cat", "bert_dot"):
        torch.manual_seed(0)
        student = get_model_class(arch).from_backbone(minilm_path).eval()
        ex = load_examples(_distill_cfg(raw, arch))
        prep = load_examples(_distill_cfg(raw, arch, prepared=str(prepared)), student)
        idx = [3, 0, 17, 80, 42]
        text, ids = ex.batch(idx), prep.batch(idx)
        assert torch.equal(text["t_pos"], ids["t_pos"]) and torch.equal(text["t_neg"], ids["t_neg"])
        with torch.no_grad():
            want = student.score_triples(text["query"], text["pos"], text["neg"])
            got = score_collated(student, ids["features"])
        assert all(torch.equal(w, g) for w, g in zip(want, got))
        assert np.array_equal(example_lengths(prep, student), example_lengths(ex, student))


@pytest.mark.slow  # ~45 s on 2 shared cores
def test_training_steps_from_the_folder_equal_the_raw_steps(prepared, raw, minilm_path):
    """The worker's step without Ray: DistillStep + AdamW over the same length-grouped batches (batch_stream: the
    prepared ones collated ahead in a thread) give the identical loss at every step, dropout seeded alike."""
    from kd.data.prefetch import batch_stream
    from kd.init import truncate_layers
    from kd.training import DistillStep, example_lengths, load_examples, rank_batches

    losses = {}
    for kind, data in (("raw", {}), ("prepared", {"prepared": str(prepared)})):
        cfg = _distill_cfg(raw, **data)
        torch.manual_seed(11)
        student = truncate_layers(get_model_class("bert_dot").from_backbone(minilm_path), 2)
        step = DistillStep.from_config(cfg, student).train()
        opt = torch.optim.AdamW(step.parameters(), lr=1e-4)
        ex = load_examples(cfg, student)
        batches = rank_batches(len(ex), 0, 11, 0, 1, 8, example_lengths(ex, student), 2)[:4]
        losses[kind] = []
        for bi, batch in enumerate(batch_stream(ex, batches)):
            torch.manual_seed(bi)
            loss = step(batch)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[kind].append(loss.item())
    assert len(losses["raw"]) == 4 and all(np.isfinite(losses["raw"]))
    assert losses["prepared"] == losses["raw"]


def test_a_mismatched_student_or_changed_source_is_refused_by_field(prepared, raw, tmp_path):
    from kd.training import check_examples

    with pytest.raises(ConfigError, match=r"data.prepared: .*folder: manifest field max_passage_length is 230 word "
                                          r"pieces, student 'bert_dot' .* needs 398"):
        check_examples(_distill_cfg(raw, options={"max_passage_length": 400}, prepared=str(prepared)))
    with pytest.raises(ConfigError, match="needs 330 .*joint longest_first"):
        check_examples(_distill_cfg(raw, "bert_cat", {"max_passage_length": 300}, prepared=str(prepared)))
    changed = tmp_path / "queries.jsonl"  # same size, one character changed
    body = raw["queries"].read_text()
    changed.write_text(body.replace("biomaterials", "biomaterialz", 1))
    with pytest.raises(ConfigError, match=r"manifest field sources.queries.sha256 .* field data.queries"):
        check_examples(_distill_cfg(raw, prepared=str(prepared), queries=str(changed)))
    changed.write_text(body + "\n")
    with pytest.raises(ConfigError, match=r"sources.queries.size is \d+, field data.queries"):
        check_examples(_distill_cfg(raw, prepared=str(prepared), queries=str(changed)))
    other = tmp_path / "other"
    shutil.copytree(prepared, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tokenizer"]["digest"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="manifest field tokenizer.digest"):
        check_examples(_distill_cfg(raw, prepared=str(other)))
    (other / "manifest.json").unlink()  # what a killed prepare's temporary folder looks like
    with pytest.raises(ConfigError, match="no manifest.json: not a complete prepared folder"):
        check_examples(_distill_cfg(raw, prepared=str(other)))
    with pytest.raises(Exception, match="field data.prepared: mode 'in_loop' trains on the raw path only"):
        DistillConfig.model_validate({**_distill_cfg(raw).model_dump(), "mode": "in_loop",
                                      "student": {"architecture": "tinybert_cat"},
                                      "loss": {"name": "standard_kd"}, "teacher": {"model": "x"},
                                      "data": {"prepared": str(prepared)}})


def test_a_bad_line_fails_the_prepare_with_file_and_line_before_ray(raw, tmp_path):
    """The readers' own error (file, line, reason), exit status 2, no Ray started and no folder written."""
    bad = tmp_path / "teacher.tsv"
    lines = raw["scores"].read_text().splitlines()
    lines[6] = "abc\t" + lines[6].split("\t", 1)[1]
    bad.write_text("\n".join(lines) + "\n")
    proc = _run("jobs.prepare", _prepare_yaml({**raw, "scores": bad}, "bad", 28, 198, strict=True))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {bad}, line 7:" in proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert not (raw["root"] / "bad").exists() and not list(raw["root"].glob(".bad.tmp-*"))


def test_the_job_on_ray_writes_the_same_folder(prepared, raw, ray_head):
    """python -m jobs.prepare on a real Ray head (Ray Data actors tokenise): every array and the manifest (but its
    creation time) equal the in-process folder's."""
    proc = _run("jobs.prepare", _prepare_yaml(raw, "by-ray", 230, 230, num_actors=1), env=ray_head.env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "prepared 81 triples (80 queries" in proc.stdout
    folder = raw["root"] / "by-ray"
    ours, theirs = (json.loads((f / "manifest.json").read_text()) for f in (prepared, folder))
    assert {k: v for k, v in ours.items() if k != "created"} == {k: v for k, v in theirs.items() if k != "created"}
    for name in ours["files"]:
        a, b = (np.load(f / f"{name}.npy", allow_pickle=False) for f in (prepared, folder))
        assert a.dtype == b.dtype and np.array_equal(a, b), name


def test_prepare_refuses_an_existing_folder(prepared, raw):
    proc = _run("jobs.prepare", _prepare_yaml(raw, "folder", 230, 230))
    assert proc.returncode == 2 and "field output" in proc.stderr and "overwrite" in proc.stderr


# ---------------------------------------------------------------------------------------- a real distill run
def _distill_yaml(raw, name: str, arch: str, **data) -> Path:
    cfg = {
        "mode": "score_file", "student": {"architecture": arch, "init": {"num_layers": 2}},
        "loss": {"name": "margin_mse"}, "teacher": {"scores": str(raw["scores"])},
        "data": {"queries": str(raw["queries"]), "passages": str(raw["passages"]), "strict": False, **data},
        "training": {"num_workers": 1, "micro_batch_size": 8, "max_steps": 4, "epochs": 1, "lr": 1e-4,
                     "log_every": 1, "checkpoint_every": 1, "num_to_keep": 4, "seed": 11, "group_by_length": 2},
        "mlflow": {"enabled": False},
        "run": {"name": name, "storage_path": str(raw["root"] / "runs")},
    }
    path = raw["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _losses(run_folder: Path) -> list[float]:
    """The loss of every step, as each step's checkpoint recorded it (kd_progress.json)."""
    progress = [json.loads(p.read_text()) for p in run_folder.glob("checkpoint_*/kd_progress.json")]
    return [p["loss"] for p in sorted(progress, key=lambda p: p["step"])]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bert_dot", "bert_cat"])
def test_distill_from_a_prepared_folder_reaches_the_raw_paths_losses(arch, prepared, raw, ray_head):
    """jobs.distill, 1 worker, 4 steps grouped by length: the same seed gives the same loss at every step from the
    raw files and from the prepared folder (with no raw file named)."""
    for name, data in ((f"raw-{arch}", {}), (f"prep-{arch}", {"prepared": str(prepared)})):
        config = _distill_yaml(raw, name, arch, **data)
        if data:
            cfg = yaml.safe_load(config.read_text())
            cfg["teacher"], cfg["data"] = {}, {"prepared": str(prepared)}
            config.write_text(yaml.safe_dump(cfg))
        proc = _run("jobs.distill", config, env=ray_head.env())
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    raw_losses, prepared_losses = (_losses(raw["root"] / "runs" / f"{kind}-{arch}") for kind in ("raw", "prep"))
    assert len(raw_losses) == 4 and all(np.isfinite(raw_losses))
    assert prepared_losses == raw_losses
