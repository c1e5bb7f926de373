"""The student zoo on real all-MiniLM-L6-v2 weights and real SciFact text."""
from __future__ import annotations

import json

import pytest
import torch

from kd.models import MODELS, STUDENTS, BertCat, BertDot, ColBERT, PreTTR, Ranker, TinyBertCat, build_student
from kd.models import backbone as bb


@pytest.fixture(scope="module")
def batch(sample_rows):
    rows = sample_rows[:6]
    return [r["query"] for r in rows], [r["passage"] for r in rows]


@pytest.fixture(scope="module")
def students(minilm_path):
    torch.manual_seed(0)
    return {arch: build_student(arch, minilm_path) for arch in STUDENTS}


def test_registry_names_every_architecture():
    assert set(STUDENTS) <= set(MODELS)
    for name, cls in MODELS.items():
        assert cls.architecture == name
    with pytest.raises(ValueError, match="unknown architecture 'bert_kat'"):
        build_student("bert_kat")


@pytest.mark.parametrize("arch", STUDENTS)
def test_scores_real_batch_and_gradients_reach_every_parameter(students, batch, arch):
    model = students[arch].train()
    # dropout off so the check is about the graph, not the noise
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.zero_grad()
    scores = model.score(*batch)
    assert scores.shape == (len(batch[0]),)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    scores.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, f"{arch}: no gradient reaches {missing[:5]} ({len(missing)} parameters)"
    model.eval()


@pytest.mark.parametrize("arch", STUDENTS)
def test_save_load_round_trip_is_exact(students, batch, arch, tmp_path):
    model = students[arch].eval()
    with torch.no_grad():
        before = model.score(*batch)
    folder = model.save_pretrained(tmp_path / arch)
    saved = json.loads((folder / "kd_config.json").read_text())
    assert saved["architecture"] == arch
    assert (folder / "model.safetensors").is_file()
    loaded = Ranker.from_pretrained(folder)  # the registry picks the class from the folder
    assert type(loaded) is type(model)
    with torch.no_grad():
        after = loaded.score(*batch)
    assert torch.equal(before, after)
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_from_pretrained_rejects_a_wrong_class(students, tmp_path):
    folder = students["tk"].save_pretrained(tmp_path / "tk")
    with pytest.raises(ValueError, match="holds a 'tk' model"):
        BertDot.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="not a saved kd model"):
        Ranker.from_pretrained(tmp_path)


def test_bert_dot_mean_pooling_reproduces_sentence_transformers(minilm_path, shared_data):
    """Cross-check against a peer: sentence-transformers' own encode of all-MiniLM-L6-v2, 20 real SciFact queries."""
    from sentence_transformers import SentenceTransformer

    queries = []
    with open(shared_data / "beir" / "scifact" / "queries.jsonl") as f:
        for line in f:
            queries.append(json.loads(line)["text"])
            if len(queries) == 20:
                break
    peer = SentenceTransformer(minilm_path, device="cpu")
    expected = torch.from_numpy(peer.encode(queries, batch_size=8, convert_to_numpy=True))
    model = BertDot.from_backbone(minilm_path, max_query_length=peer.max_seq_length).eval()
    assert model.options["pooling"] == "mean" and model.options["normalize"] is True  # read from the ST folder
    with torch.no_grad():
        ours = model.encode_queries(queries)
    assert ours.shape == expected.shape == (20, 384)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    # an explicit choice overrides what the folder declares
    assert BertDot.from_backbone(minilm_path, pooling="cls").options["pooling"] == "cls"


def test_colbert_padding_does_not_change_the_score(students, sample_rows):
    model: ColBERT = students["colbert"].eval()
    q, p = sample_rows[0]["query"], sample_rows[0]["passage"][:200]
    long_q, long_p = sample_rows[2]["query"] + " and more words here", sample_rows[2]["passage"]
    with torch.no_grad():
        alone = model.score([q], [p])
        padded = model.score([q, long_q], [p, long_p])  # p and q are padded to the longer ones in this batch
    batch = model.tokenize([q, long_q], [p, long_p])
    assert (batch["d_attention_mask"][0] == 0).any() and (batch["q_attention_mask"][0] == 0).any()
    torch.testing.assert_close(padded[0], alone[0], atol=1e-4, rtol=1e-6)


def test_colbert_query_augmentation_adds_attended_mask_tokens(students):
    model: ColBERT = students["colbert"]
    batch = model.tokenize(["short", "a much longer query with words"], ["p", "p"])
    ids, mask = batch["q_input_ids"], batch["q_attention_mask"]
    n = model.options["n_mask_tokens"]
    for row in range(2):
        real = int(mask[row].sum())
        assert (ids[row, real - n : real] == model.tokenizer.mask_token_id).all()
        assert ids[row, real - n - 1] == model.tokenizer.sep_token_id
        assert (mask[row, real:] == 0).all()


def test_colbert_max_sim_excludes_padding_by_hand():
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    q_mask = torch.tensor([[1, 1, 0]])
    d = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [100.0, 100.0]]])
    d_mask = torch.tensor([[1, 1, 0]])
    # q0: max(2, 0) = 2; q1: max(0, 3) = 3; q2 is padding; d2 is padding
    assert ColBERT.late_interaction(q, q_mask, d, d_mask).item() == pytest.approx(5.0)


def test_prettr_split_zero_equals_joint_bert_cat_encoding(minilm_path, sample_rows):
    """With k = 0 nothing is encoded separately: PreTTR is BERT_CAT's joint encoding with a bias-free head."""
    torch.manual_seed(0)
    prettr = PreTTR.from_backbone(minilm_path, split_layer=0).eval()
    cat = BertCat(prettr.encoder, prettr.tokenizer).eval()
    cat.classifier.weight.data.copy_(prettr.classifier.weight.data)
    cat.classifier.bias.data.zero_()
    with torch.no_grad():
        # one pair at a time (no padding between query and passage), short enough that neither model truncates
        for row in sample_rows[:4]:
            passage = row["passage"][:400]
            a = prettr.score([row["query"]], [passage])
            b = cat.score([row["query"]], [passage])
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_prettr_split_changes_the_computation_and_is_validated(minilm_path, sample_rows):
    torch.manual_seed(0)
    full = PreTTR.from_backbone(minilm_path, split_layer=0).eval()
    split = PreTTR(full.encoder, full.tokenizer, split_layer=3).eval()
    split.classifier.load_state_dict(full.classifier.state_dict())
    with torch.no_grad():
        a = full.score([sample_rows[0]["query"]], [sample_rows[0]["passage"]])
        b = split.score([sample_rows[0]["query"]], [sample_rows[0]["passage"]])
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"split_layer must be in \[0, 6\]"):
        PreTTR(full.encoder, full.tokenizer, split_layer=7)


def test_tk_kernels_and_learned_mixer(students):
    tk = students["tk"]
    assert tk.mu.flatten().tolist() == pytest.approx([1.0, 0.9, 0.7, 0.5, 0.3, 0.1, -0.1, -0.3, -0.5, -0.7, -0.9])
    assert tk.mixer.item() == pytest.approx(0.5) and tk.mixer.requires_grad
    assert tk.kernel_weights.bias is None
    # embeddings come from the backbone's word-piece embeddings
    src = bb.load_encoder(bb.default_backbone())[0].get_input_embeddings().weight
    assert torch.equal(tk.embeddings.weight.detach(), src.detach())


def test_tinybert_cat_exposes_pre_softmax_attention_and_hidden_states(students, batch):
    model: TinyBertCat = students["tinybert_cat"].eval()
    inputs = model.tokenize(*batch)
    with torch.no_grad():
        out = model.forward_kd(**inputs)
        # HF's own eager attention probabilities = softmax(our scores + padding mask)
        model.encoder.config._attn_implementation = "eager"
        try:
            ref = model.encoder(**inputs, output_attentions=True)
        finally:
            model.encoder.config._attn_implementation = "sdpa"
    b, length = inputs["input_ids"].shape
    assert len(out.attentions) == 6 and len(out.hidden_states) == 7
    assert out.attentions[0].shape == (b, 12, length, length) and out.hidden_states[0].shape == (b, length, 384)
    assert out.logits.shape == (b, 2)
    mask = bb.extended_mask(inputs["attention_mask"], torch.float32)
    for ours, theirs in zip(out.attentions, ref.attentions):
        torch.testing.assert_close((ours + mask).softmax(-1), theirs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.score(*batch), out.logits.softmax(-1)[:, 1])


def test_dual_encoders_expose_encode_methods(students, batch):
    dot: BertDot = students["bert_dot"]
    with torch.no_grad():
        q, d = dot.encode_queries(batch[0]), dot.encode_docs(batch[1])
        torch.testing.assert_close((q * d).sum(-1), dot.score(*batch), atol=1e-5, rtol=1e-5)
        cq, cq_mask = students["colbert"].encode_queries(batch[0])
    assert q.shape == (len(batch[0]), 384) and cq.shape[-1] == 128 and cq_mask.shape == cq.shape[:2]


@pytest.mark.parametrize("arch", ["bert_dot", "bert_cat", "tinybert_cat"])
def test_predict_batches_by_length_and_keeps_order(students, sample_rows, arch):
    """bert_dot: character-length batches; the cross-encoders: tokenized once, batched by exact token count."""
    model = students[arch].eval()
    assert (model.pretokenize(["q"], ["p"]) is None) == (arch == "bert_dot")
    queries = [r["query"] for r in sample_rows]
    passages = [r["passage"] for r in sample_rows]
    with torch.no_grad():
        direct = torch.cat([model.score([q], [p]) for q, p in zip(queries, passages)])
    batched = model.predict(queries, passages, batch_size=5)
    torch.testing.assert_close(batched, direct, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="aligned"):
        model.predict(queries, passages[:-1])


@pytest.mark.parametrize("arch", STUDENTS)
def test_score_triples_equals_scoring_each_side(students, sample_rows, arch):
    """Dual encoders encode each query once for a triple; the scores must not change."""
    model = students[arch].eval()
    q = [r["query"] for r in sample_rows[0:6:2]]
    pos = [r["passage"][:300] for r in sample_rows[0:6:2]]
    neg = [r["passage"][:300] for r in sample_rows[1:7:2]]
    with torch.no_grad():
        s_pos, s_neg = model.score_triples(q, pos, neg)
        torch.testing.assert_close(s_pos, model.score(q, pos), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(s_neg, model.score(q, neg), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("arch", STUDENTS)
def test_every_parameter_survives_deepspeeds_startup_broadcast(students, arch):
    """DeepSpeed's engine broadcasts each parameter as `p.data.view(torch.uint8)`; a 0-d parameter cannot be viewed
    that way (TK's mixer was 0-d and every TK distill job died at start-up)."""
    for name, p in students[arch].named_parameters():
        assert p.dim() >= 1, f"{arch}.{name} is 0-d"
        p.data.view(torch.uint8)


def test_tk_loads_a_folder_saved_with_a_0d_mixer(students, batch, tmp_path):
    from safetensors.torch import load_file, save_file

    tk = students["tk"].eval()
    folder = tk.save_pretrained(tmp_path / "tk")
    weights = load_file(folder / "model.safetensors")
    weights["mixer"] = weights["mixer"].reshape(())  # the old layout
    save_file(weights, folder / "model.safetensors")
    loaded = Ranker.from_pretrained(folder)
    assert loaded.mixer.shape == (1,)
    with torch.no_grad():
        assert torch.equal(loaded.score(*batch), tk.score(*batch))


def test_bert_dot_predict_encodes_each_distinct_text_once_and_matches_pairwise_scoring(minilm_path):
    from kd.models import BertDot
    from kd.models.base import Ranker

    model = BertDot.from_backbone(minilm_path).eval()
    queries = ["what is a cell", "protein folding", "what is a cell"] * 4
    passages = ["cells are the units of life", "a protein folds into its shape in water", "dna"] * 4
    calls = []
    embed = model.embed
    model.embed = lambda **b: calls.append(len(b["input_ids"])) or embed(**b)
    fast = model.predict(queries, passages, batch_size=64)
    assert sum(calls) == 2 + 3  # 2 distinct queries + 3 distinct passages, not 12 + 12
    del model.embed
    torch.testing.assert_close(fast, Ranker.predict(model, queries, passages, batch_size=5), atol=1e-5, rtol=1e-5)
