"""Hostile data files (issue 14, part 5): byte-order marks, the two teacher-score readers agreeing,
absurd / duplicate teacher lines, incomplete BEIR folders, and `jobs.mine_triples` on mismatched inputs.

Every test reads real files written to disk (small copies of ../shared/data where real text matters).
"""

from __future__ import annotations

import gzip
import json
import logging
import random
import shutil
from pathlib import Path

import pytest

import kd.data as D
from kd.data import FormatError, ReadStats
from kd.data.formats import MAX_ABS_TEACHER_SCORE
from kd.metrics import evaluate

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real IR data not found at {DATA} (expected ../shared/data beside the repo root)"
)
SCIFACT = DATA / "beir" / "scifact"
DL19 = DATA / "trec-dl-2019"
BOM = b"\xef\xbb\xbf"


def write(path: Path, text: str, *, bom: bool = False) -> Path:
    data = (BOM if bom else b"") + text.encode("utf-8")
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------------
# byte-order marks
# ------------------------------------------------------------------------------------------

# reader name -> (file name, content, read(path) -> comparable value)
READERS = {
    "iter_id_text": ("q.tsv", "1\tfirst query\n2\tsecond\n", lambda p: list(D.iter_id_text(p))),
    "read_id_text": ("q.tsv", "1\tfirst query\n2\tsecond\n", D.read_id_text),
    "load_queries_tsv": ("q.tsv", "a1\tfirst query\nb2\tsecond\n", D.load_queries),
    "tsv_index_int": ("c.tsv", "7\tpassage seven\n8\tpassage eight\n",
                      lambda p: dict(D.TsvTextIndex(p, show_progress=False))),
    "tsv_index_str": ("c.tsv", "d7\tpassage seven\nd8\tpassage eight\n",
                      lambda p: dict(D.TsvTextIndex(p, show_progress=False))),
    "trec_qrels": ("qrels.txt", "1 0 d1 1\n2 0 d2 0\n", D.read_trec_qrels),
    "beir_qrels_header": ("qrels.tsv", "query-id\tcorpus-id\tscore\n1\td1\t1\n2\td2\t2\n", D.read_beir_qrels),
    "read_qrels_beir": ("qrels.tsv", "query-id\tcorpus-id\tscore\n1\td1\t1\n2\td2\t2\n", D.read_qrels),
    "read_qrels_trec": ("qrels.txt", "1\t0\td1\t1\n2\t0\td2\t0\n", D.read_qrels),
    "trec_run": ("run.trec", "1 Q0 d1 1 2.5 bm25\n1 Q0 d2 2 1.5 bm25\n2 Q0 d1 1 0.5 bm25\n", D.read_trec_run),
    "triples": ("triples.tsv", "1\t2\t3\n4\t5\t6\n", lambda p: list(D.iter_triples(p))),
    "teacher_per_line": ("t.tsv", "1.5\t0.5\t1\t2\t3\n2.5\t-1\t4\t5\t6\n",
                         lambda p: [tuple(r) for r in D.iter_teacher_scores(p)]),
    "teacher_fast_auto": ("t.tsv", "1.5\t0.5\t1\t2\t3\n2.5\t-1\t4\t5\t6\n",
                          lambda p: [tuple(r) for r in D.read_teacher_scores(p, show_progress=False)]),
    "teacher_fast_str": ("t.tsv", "1.5\t0.5\tq1\tp2\tp3\n2.5\t-1\tq4\tp5\tp6\n",
                         lambda p: [tuple(r) for r in D.read_teacher_scores(p, ids="str", show_progress=False)]),
    "teacher_chunks": ("t.tsv", "1.5\t0.5\t1\t2\t3\n2.5\t-1\t4\t5\t6\n",
                       lambda p: [tuple(r) for c in D.iter_teacher_score_chunks(p, chunk_bytes=8) for r in c]),
    "beir_corpus": ("corpus.jsonl", '{"_id": "d1", "title": "T", "text": "x"}\n{"_id": "d2", "text": "y"}\n',
                    D.read_beir_corpus),
    "beir_corpus_iter": ("corpus.jsonl", '{"_id": "d1", "title": "T", "text": "x"}\n{"_id": "d2", "text": "y"}\n',
                         lambda p: list(D.iter_beir_corpus(p))),
    "beir_queries": ("queries.jsonl", '{"_id": "1", "text": "a query"}\n{"_id": "2", "text": "b"}\n',
                     D.read_beir_queries),
    "load_passages_jsonl": ("corpus.jsonl", '{"_id": "d1", "title": "T", "text": "x"}\n', D.load_passages),
}


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("reader", sorted(READERS))
def test_bom_is_stripped_by_every_reader(tmp_path, reader, gz):
    """A file saved with a UTF-8 BOM reads exactly like the same file without one."""
    name, content, read = READERS[reader]
    if gz and reader.startswith("tsv_index"):
        pytest.skip("TsvTextIndex memory-maps its file: no .gz")
    name += ".gz" if gz else ""
    (tmp_path / "plain").mkdir()
    (tmp_path / "bom").mkdir()
    plain = read(write(tmp_path / "plain" / name, content))
    with_bom = read(write(tmp_path / "bom" / name, content, bom=True))
    assert with_bom == plain


def test_bom_tsv_index_offsets_point_at_the_text(tmp_path):
    """The index keeps byte offsets into the file: the BOM must shift them, not leak into the first id."""
    index = D.TsvTextIndex(write(tmp_path / "c.tsv", "7\tseven\n8\teight\n", bom=True), show_progress=False)
    assert index["7"] == "seven" and index[8] == "eight" and list(index) == ["7", "8"]


def test_bom_beir_folder(tmp_path):
    for name, text in (("corpus.jsonl", '{"_id": "d1", "title": "", "text": "x"}\n'),
                       ("queries.jsonl", '{"_id": "q1", "text": "a"}\n'),
                       ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        write(tmp_path / name, text, bom=True)
    ds = D.load_beir(tmp_path, "test")
    assert ds.qrels == {"q1": {"d1": 1}} and ds.queries == {"q1": "a"} and list(ds.corpus) == ["d1"]


@pytest.mark.parametrize("reader", ["trec_run", "beir_qrels_header", "teacher_per_line", "teacher_fast_auto",
                                    "tsv_index_int", "beir_corpus", "read_id_text"])
def test_bom_only_file_is_an_empty_file(tmp_path, reader):
    name, _, read = READERS[reader]
    path = tmp_path / name
    path.write_bytes(BOM)
    with pytest.raises(FormatError, match="empty file") as ei:
        read(path)
    assert str(path) in str(ei.value)


@pytest.mark.parametrize("reader", ["trec_run", "read_id_text", "teacher_per_line", "teacher_fast_auto",
                                    "tsv_index_int", "triples", "trec_qrels"])
def test_bom_after_line_one_is_a_bad_line(tmp_path, reader):
    """Only line 1 may carry a BOM; one further down (files concatenated) would corrupt an id, so it is named."""
    name, content, read = READERS[reader]
    path = tmp_path / name
    first, rest = content.split("\n", 1)
    path.write_bytes(first.encode() + b"\n" + BOM + rest.encode())
    with pytest.raises(FormatError) as ei:
        read(path)
    assert (ei.value.line, ei.value.reason) == (2, D.formats.MISPLACED_BOM)
    assert str(path) in str(ei.value) and "line 2" in str(ei.value)


@pytest.mark.parametrize("content", ["d1\tfirst passage\nd2\tsecond\n", "first passage\nsecond\n"],
                         ids=["tsv", "plain"])
def test_bom_cli_text_files(tmp_path, content):
    """`kd rerank` / `kd encode` read TSV or plain-text passage files: a BOM is not part of the first id/text."""
    from kd.cli import _read_texts

    (tmp_path / "plain").mkdir()
    (tmp_path / "bom").mkdir()
    plain = _read_texts(str(write(tmp_path / "plain" / "p.txt", content)))
    assert _read_texts(str(write(tmp_path / "bom" / "p.txt", content, bom=True))) == plain


def test_bom_quickstart_pairs_file(tmp_path):
    from kd.quickstart import read_pairs

    path = write(tmp_path / "pairs.jsonl", '{"query": "q", "passage": "p", "label": 1}\n', bom=True)
    assert read_pairs(path) == [{"query": "q", "passage": "p", "label": 1}]


@needs_data
def test_dl19_run_and_qrels_with_bom_score_the_same(tmp_path):
    """The DL'19 BM25 run and qrels saved with a BOM: nDCG@10 0.5058, as without (was 0.5053 / an error)."""
    run_src, qrels_src = DL19 / "runs" / "BM25.top100.trec", DL19 / "qrels" / "test.tsv"
    run_bom, qrels_bom = tmp_path / "BM25.top100.trec", tmp_path / "test.tsv"
    run_bom.write_bytes(BOM + run_src.read_bytes())
    qrels_bom.write_bytes(BOM + qrels_src.read_bytes())
    plain = evaluate(D.read_trec_run(run_src), D.read_qrels(qrels_src), ["ndcg@10"], relevance_level=2)
    bom = evaluate(D.read_trec_run(run_bom), D.read_qrels(qrels_bom), ["ndcg@10"], relevance_level=2)
    assert round(plain["ndcg@10"], 4) == 0.5058
    assert bom["ndcg@10"] == plain["ndcg@10"]
    assert D.read_trec_run(run_bom) == D.read_trec_run(run_src)


# ------------------------------------------------------------------------------------------
# the fast (pyarrow) and per-line teacher-score readers accept exactly the same files
# ------------------------------------------------------------------------------------------

GOOD = "1.5\t0.5\t1\t2\t3\n"
TRICKY_TEACHER_FILES = {
    "plain": GOOD * 3,
    "bom": "\ufeff" + GOOD * 3,
    "bom_mid_file": GOOD + "\ufeff" + GOOD * 2,
    "lead_space_pos": GOOD + " 1.5\t0.5\t1\t2\t3\n" + GOOD,
    "trail_space_pos": GOOD + "1.5 \t0.5\t1\t2\t3\n" + GOOD,
    "lead_space_neg": GOOD + "1.5\t 0.5\t1\t2\t3\n" + GOOD,
    "spaces_around_ids": GOOD + "1.5\t0.5\t 1\t2 \t 3 \n" + GOOD,
    "vertical_tab_id": GOOD + "1.5\t0.5\t1\t2\t3\x0b\n" + GOOD,
    "nbsp_id": GOOD + "1.5\t0.5\t1\t\u00a02\t3\n" + GOOD,
    "ideographic_space_id": GOOD + "1.5\t0.5\tq1\u3000\tp2\tp3\n" + GOOD,
    "nbsp_score": GOOD + "1.5\u00a0\t0.5\t1\t2\t3\n" + GOOD,
    "file_separator_score": GOOD + "\x1c1.5\t0.5\t1\t2\t3\n" + GOOD,
    "plus_and_exponent": GOOD + "+1.5e2\t-.5E-1\t1\t2\t3\n" + GOOD,
    "underscore": GOOD + "1_0\t0.5\t1\t2\t3\n" + GOOD,
    "hex": GOOD + "0x10\t0.5\t1\t2\t3\n" + GOOD,
    "quoted": GOOD + '"1.5"\t0.5\t1\t2\t3\n' + GOOD,
    "nan": GOOD + "nan\t0.5\t1\t2\t3\n" + GOOD,
    "infinity": GOOD + "1\t-Infinity\t1\t2\t3\n" + GOOD,
    "overflow": GOOD + "1e400\t0.5\t1\t2\t3\n" + GOOD,
    "absurd": GOOD + "1e30\t0.5\t1\t2\t3\n" + GOOD,
    "crlf": GOOD.replace("\n", "\r\n") * 3,
    "lone_cr": GOOD + "1.5\t0.5\t1\t2\t3\r1.5\t0.5\t1\t2\t3\n",
    "blank_line": GOOD + "\n" + GOOD,
    "spaces_line": GOOD + "   \n" + GOOD,
    "trailing_tab": GOOD + "1.5\t0.5\t1\t2\t3\t\n" + GOOD,
    "empty_id": GOOD + "1.5\t0.5\t\t2\t3\n" + GOOD,
    "space_id": GOOD + "1.5\t0.5\t \t2\t3\n" + GOOD,
    "string_ids": GOOD + "1.5\t0.5\tq1\tD2\t3\n" + GOOD,
    "non_canonical_int_ids": GOOD + "1.5\t0.5\t007\t+2\t-0\n" + GOOD,
    "no_final_newline": GOOD * 2 + GOOD.rstrip("\n"),
    "duplicate_lines": GOOD * 3,
}
TRICKY_TEACHER_BYTES = {
    **{name: content.encode("utf-8") for name, content in TRICKY_TEACHER_FILES.items()},
    "invalid_utf8": GOOD.encode() + b"1.5\t0.5\t1\t\xff2\t3\n" + GOOD.encode(),
}


def _outcome(read, path: Path, strict: bool):
    """What a reader made of a file: its records and counts, or its error (reason and line)."""
    stats = ReadStats(quiet=True)
    try:
        rows = [tuple(r)[:5] for r in read(path, strict, stats)]
    except FormatError as e:
        return ("error", e.reason, e.line)
    return (rows, dict(stats.skipped), dict(stats.first_bad_line), stats.lines, stats.records)


def _per_line(path, strict, stats):
    return list(D.iter_teacher_scores(path, strict=strict, stats=stats))


def _fast(chunk_bytes):
    def read(path, strict, stats):
        ts = D.read_teacher_scores(path, strict=strict, stats=stats, ids="str", chunk_bytes=chunk_bytes,
                                   show_progress=False)
        return list(ts)
    return read


def _fast_auto(path, strict, stats):
    return list(D.read_teacher_scores(path, strict=strict, stats=stats, show_progress=False))


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_fast_and_per_line_teacher_readers_agree(tmp_path, strict):
    """Every tricky file: the pyarrow path (big blocks, tiny blocks, auto ids) gives what the per-line reader gives."""
    disagree = []
    for name, content in TRICKY_TEACHER_BYTES.items():
        path = tmp_path / f"{name}.tsv"
        path.write_bytes(content)
        expected = _outcome(_per_line, path, strict)
        for label, read in (("fast", _fast(64 << 20)), ("fast-8-byte-blocks", _fast(8)), ("auto", _fast_auto)):
            got = _outcome(read, path, strict)
            if label == "auto" and got[0] != "error":  # int ids come back as ints: compare their strings
                got = ([(p, n, str(q), str(a), str(b)) for p, n, q, a, b in got[0]], *got[1:])
            if got != expected:
                disagree.append((name, label, expected, got))
    assert not disagree, "\n".join(map(repr, disagree))


def test_fast_and_per_line_teacher_readers_agree_on_fuzzed_scores(tmp_path):
    """Random score strings (digits, signs, exponents, dots, spaces, inf/nan letters): same verdict, same value."""
    rng = random.Random(14)
    alphabet = "0123456789.eE+- infaINFA_"
    fields = sorted({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(3000)})
    fields = [f for f in fields if f.strip(" ") == f.strip() and f.strip()]  # keep lines parseable as 5 columns
    disagree = []
    for i, f in enumerate(fields):
        path = write(tmp_path / f"f{i}.tsv", GOOD + f"{f}\t0.5\t1\t2\t3\n")
        expected = _outcome(_per_line, path, True)
        got = _outcome(_fast(64 << 20), path, True)
        if got != expected:
            disagree.append((f, expected, got))
    assert not disagree, disagree[:20]


# ------------------------------------------------------------------------------------------
# absurd scores and duplicate lines in teacher files
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1e30", "-2e4", "10000.5", "3.4e38"])
@pytest.mark.parametrize("reader", ["per_line", "fast", "fast_int"])
def test_absurd_teacher_scores_name_file_and_line(tmp_path, reader, value):
    path = write(tmp_path / "t.tsv", GOOD * 3 + f"1.0\t{value}\t1\t2\t3\n" + GOOD)
    read = {
        "per_line": lambda s, st: list(D.iter_teacher_scores(path, strict=s, stats=st)),
        "fast": lambda s, st: D.read_teacher_scores(path, strict=s, stats=st, show_progress=False),
        "fast_int": lambda s, st: D.read_teacher_scores(path, strict=s, stats=st, ids="int", show_progress=False),
    }[reader]
    with pytest.raises(FormatError) as ei:
        read(True, ReadStats())
    assert (ei.value.path, ei.value.line, ei.value.reason) == (str(path), 4, D.formats.SCORE_OUT_OF_RANGE)
    assert value in str(ei.value) and "line 4" in str(ei.value)
    stats = ReadStats(quiet=True)
    assert len(read(False, stats)) == 4 and stats.skipped == {D.formats.SCORE_OUT_OF_RANGE: 1}


def test_teacher_scores_at_the_bound_are_accepted(tmp_path):
    b = MAX_ABS_TEACHER_SCORE
    path = write(tmp_path / "t.tsv", f"{b!r}\t{-b!r}\t1\t2\t3\n")
    assert [tuple(r)[:2] for r in D.iter_teacher_scores(path)] == [(b, -b)]
    assert D.read_teacher_scores(path, show_progress=False).pos_score.tolist() == [b]


def test_teacher_writer_refuses_absurd_scores(tmp_path):
    with pytest.raises(FormatError, match="record 2") as ei:
        D.write_teacher_scores(tmp_path / "t.tsv", [(1.0, 0.5, 1, 2, 3), (1e30, 0.5, 1, 2, 4)])
    assert ei.value.reason == D.formats.SCORE_OUT_OF_RANGE


QUERIES = {"1": "what is a query", "4": "another query"}
PASSAGES = {str(i): f"passage {i}" for i in range(2, 8)}


@pytest.mark.parametrize("source", ["path", "columnar"])
def test_join_counts_duplicate_teacher_lines(tmp_path, caplog, source):
    """Lines 3 and 5 repeat line 1's (qid, pos, neg) (line 5 with other scores): counted, reported, kept."""
    content = ("1.5\t0.5\t1\t2\t3\n" "2.5\t-1\t4\t5\t6\n" "1.5\t0.5\t1\t2\t3\n"
               "1.0\t0.0\t1\t3\t2\n" "9.0\t9.5\t1\t2\t3\n" "0.5\t0.25\t4\t6\t5\n")
    path = write(tmp_path / "t.tsv", content)
    src = path if source == "path" else D.read_teacher_scores(path, show_progress=False)
    stats = D.JoinStats()
    with caplog.at_level(logging.WARNING):
        rows = list(D.join_teacher_scores(src, QUERIES, PASSAGES, stats=stats))
    assert len(rows) == 6 == stats.joined  # counted, not dropped
    assert stats.duplicates == 2 and stats.first_duplicate_line == 3
    assert "2 duplicate" in stats.summary() and "line 3" in stats.summary()
    assert any("2 duplicate" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


def test_join_without_duplicates_reports_none(tmp_path):
    path = write(tmp_path / "t.tsv", "1.5\t0.5\t1\t2\t3\n2.5\t-1\t4\t5\t6\n")
    stats = D.JoinStats()
    list(D.join_teacher_scores(path, QUERIES, PASSAGES, stats=stats))
    assert stats.duplicates == 0 and stats.first_duplicate_line is None
    assert "duplicate" not in stats.summary().replace(str(path), "")


def test_join_triples_counts_duplicates(tmp_path):
    path = write(tmp_path / "triples.tsv", "1\t2\t3\n4\t5\t6\n1\t2\t3\n")
    stats = D.JoinStats()
    assert len(list(D.join_triples(path, QUERIES, PASSAGES, stats=stats))) == 3
    assert (stats.duplicates, stats.first_duplicate_line) == (1, 3)


# ------------------------------------------------------------------------------------------
# incomplete BEIR folders
# ------------------------------------------------------------------------------------------


def _tiny_beir(folder: Path) -> Path:
    folder.mkdir(parents=True)
    write(folder / "corpus.jsonl", '{"_id": "d1", "title": "", "text": "x"}\n{"_id": "d2", "text": "y z"}\n')
    write(folder / "queries.jsonl", '{"_id": "q1", "text": "x"}\n')
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    write(folder / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return folder


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "."])
def test_beir_folder_missing_file_is_a_format_error_naming_it(tmp_path, missing):
    folder = _tiny_beir(tmp_path / "beir")
    if missing == ".":
        shutil.rmtree(folder)
    else:
        (folder / missing).unlink()
    with pytest.raises(FormatError) as ei:
        D.load_beir(folder, "test")
    assert str(folder / missing if missing != "." else folder) in str(ei.value)
    assert isinstance(ei.value, FileNotFoundError)  # callers that caught FileNotFoundError still do
    with pytest.raises(FormatError, match="missing"):
        D.bm25_beir(folder, "test", show_progress=False)


def test_beir_folder_with_gzipped_corpus(tmp_path):
    folder = _tiny_beir(tmp_path / "beir")
    src = folder / "corpus.jsonl"
    (folder / "corpus.jsonl.gz").write_bytes(gzip.compress(src.read_bytes()))
    src.unlink()
    assert sorted(D.load_beir(folder, "test").corpus) == ["d1", "d2"]


# ------------------------------------------------------------------------------------------
# jobs.mine_triples on mismatched inputs
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory):
    """A real BEIR folder in miniature: 6 SciFact train claims, their positives and 24 other abstracts."""
    folder = tmp_path_factory.mktemp("scifact_slice")
    lines = (SCIFACT / "qrels" / "train.tsv").read_text().splitlines()
    judged = lines[1:7]
    qids = {ln.split("\t")[0] for ln in judged}
    positives = {ln.split("\t")[1] for ln in judged}
    docs = []
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            if d["_id"] in positives or len(docs) < 24 + len(positives):
                docs.append(line)
    write(folder / "corpus.jsonl", "".join(docs))
    with open(SCIFACT / "queries.jsonl", encoding="utf-8") as f:
        write(folder / "queries.jsonl", "".join(ln for ln in f if json.loads(ln)["_id"] in qids))
    (folder / "qrels").mkdir()
    write(folder / "qrels" / "train.tsv", "\n".join([lines[0], *judged]) + "\n")
    doc_ids = [json.loads(d)["_id"] for d in docs]
    return folder, sorted(qids), doc_ids


def _run_file(path: Path, qids, doc_ids) -> Path:
    lines = [f"{q} Q0 {d} {r} {20.0 - r} test" for q in qids for r, d in enumerate(doc_ids, 1)]
    return write(path, "\n".join(lines) + "\n")


def _mine(tmp_path: Path, beir: Path, run: Path | None, capsys):
    from jobs.mine_triples import main

    out = tmp_path / "out" / "triples.tsv"
    argv = ["--set", f"beir={beir}", "--set", f"output={out}", "--set", "top_k=10", "--set", "n_negatives=2"]
    if run is not None:
        argv += ["--set", f"run={run}"]
    else:
        argv += ["--set", f"bm25_run_out={tmp_path / 'out' / 'bm25.trec'}"]
    rc = main(argv)
    return rc, capsys.readouterr(), out


@needs_data
def test_mine_triples_job_good_run(tmp_path, scifact_slice, capsys):
    folder, qids, doc_ids = scifact_slice
    rc, io, out = _mine(tmp_path, folder, _run_file(tmp_path / "run.trec", qids, doc_ids), capsys)
    assert rc == 0, io.err
    triples = list(D.iter_triples(out))
    assert len(triples) == 12 and {t.neg_pid for t in triples} <= set(doc_ids)


@needs_data
def test_mine_triples_job_refuses_unknown_documents(tmp_path, scifact_slice, capsys):
    folder, qids, doc_ids = scifact_slice
    run = _run_file(tmp_path / "run.trec", qids, [*doc_ids[:3], "99999999", *doc_ids[3:]])
    rc, io, out = _mine(tmp_path, folder, run, capsys)
    assert rc == 2
    assert str(run) in io.err and "line 4" in io.err and "'99999999'" in io.err and "corpus.jsonl" in io.err
    assert not out.exists()


@needs_data
def test_the_pipelines_mine_stage_refuses_unknown_documents_too(tmp_path, scifact_slice, capsys):
    """The pipeline's mine stage runs the job's body (kd/data/mine_file.py): it wrote a file of unknown ids."""
    from jobs.pipeline import main

    folder, qids, doc_ids = scifact_slice
    run = _run_file(tmp_path / "run.trec", qids, [*doc_ids[:3], "99999999", *doc_ids[3:]])
    rc = main(["--config", str(REPO / "configs" / "quickstart.yaml"), "--set", f"output_dir={tmp_path / 'qs'}",
               "--set", f"mine.beir={folder}", "--set", f"mine.run={run}",
               "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    assert str(run) in err and "line 4" in err and "'99999999'" in err
    assert not list((tmp_path / "qs").rglob("triples.tsv"))


@needs_data
def test_mine_triples_job_refuses_a_run_sharing_no_query(tmp_path, scifact_slice, capsys):
    folder, _, doc_ids = scifact_slice
    run = _run_file(tmp_path / "run.trec", ["999001", "999002"], doc_ids)
    rc, io, out = _mine(tmp_path, folder, run, capsys)
    assert rc == 2 and "share no query" in io.err and str(run) in io.err
    assert not out.exists()


@needs_data
def test_mine_triples_job_refuses_to_write_no_triples(tmp_path, scifact_slice, capsys):
    """Shared queries, known documents, but every candidate is a positive: no triple, an error, no 0-byte file."""
    folder, qids, _ = scifact_slice
    pos = {ln.split("\t")[0]: ln.split("\t")[1] for ln in (folder / "qrels" / "train.tsv").read_text().splitlines()[1:]}
    run = write(tmp_path / "run.trec", "".join(f"{q} Q0 {pos[q]} 1 5.0 test\n" for q in qids))
    rc, io, out = _mine(tmp_path, folder, run, capsys)
    assert rc == 2 and "no triples" in io.err and "without a negative candidate" in io.err
    assert not out.exists()


@needs_data
@pytest.mark.parametrize("with_run", [False, True], ids=["bm25", "run"])
def test_mine_triples_job_beir_folder_without_queries(tmp_path, scifact_slice, capsys, with_run):
    """No queries.jsonl: exit 2 naming it (was a FileNotFoundError traceback), before BM25 or mining."""
    folder, qids, doc_ids = scifact_slice
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "queries.jsonl").unlink()
    run = _run_file(tmp_path / "run.trec", qids, doc_ids) if with_run else None
    rc, io, out = _mine(tmp_path, broken, run, capsys)
    assert rc == 2, io.err
    assert str(broken / "queries.jsonl") in io.err and "Traceback" not in io.err
    assert not out.exists()
