"""The unpadded forward (kd.models.unpadded) equals the padded one, on real all-MiniLM-L6-v2 weights and real SciFact
text of very different lengths (titles of ~15 tokens beside 200-token abstracts in one batch).

fp32: within 1e-5 (absolute + relative: ColBERT's scores are sums of ~30 token similarities, |s| ≈ 90). bf16 autocast:
scores and pooled embeddings within bf16 tolerance (2 × bf16's 2^-7 relative step, plus 1e-2 absolute); per-token
tensors (ColBERT's vectors, attention outputs), where single elements of thousands drift further, no farther from the
fp32 result (Frobenius norm) than the padded path's own bf16 result is, within 1.5×. Each wired architecture, scores
and (dual encoders) embeddings / token vectors at real positions; each CPU kernel on its own; flash-attn on CUDA."""
from __future__ import annotations

import json

import pytest
import torch

from kd.models import BertCat, BertDot, ColBERT, HFCrossEncoder, Ranker, TinyBertCat, build_student
from kd.models import backbone as bb
from kd.models import unpadded as up

WIRED = ("bert_cat", "bert_dot", "colbert", "tinybert_cat", "hf_cross_encoder")
FP32 = {"atol": 1e-5, "rtol": 1e-5}
BF16 = {"atol": 1e-2, "rtol": 2 * 2 ** -7}


def assert_bf16_close(got: torch.Tensor, padded: torch.Tensor, fp32: torch.Tensor, factor: float = 1.5) -> None:
    """`got` (bf16) is as close to the fp32 result as the padded path's bf16 result is (Frobenius norm, × factor)."""
    err, own = (got.float() - fp32).norm(), (padded.float() - fp32).norm()
    assert err <= factor * own + 1e-6 * fp32.norm(), f"bf16 error {err:.4g} vs the padded path's own {own:.4g}"


@pytest.fixture(scope="module")
def texts(shared_data):
    """24 SciFact claims and 24 passages: every third a bare title, the others title + abstract (long)."""
    folder = shared_data / "beir" / "scifact"
    with (folder / "queries.jsonl").open() as f:
        queries = [json.loads(next(f))["text"] for _ in range(24)]
    with (folder / "corpus.jsonl").open() as f:
        docs = [json.loads(next(f)) for _ in range(24)]
    passages = [d["title"] if i % 3 == 0 else d["title"] + " " + d["text"] for i, d in enumerate(docs)]
    return queries, passages


@pytest.fixture(scope="module")
def models(minilm_path):
    torch.manual_seed(0)
    built = {arch: build_student(arch, minilm_path, unpadded=False).eval() for arch in WIRED if arch != "hf_cross_encoder"}
    built["hf_cross_encoder"] = HFCrossEncoder.from_backbone(minilm_path, max_length=256, unpadded=False).eval()
    return built


def _both(model: Ranker, fn):
    """fn() with the padded path, then with the unpadded path forced (the option restored afterwards)."""
    saved = model.options["unpadded"]
    try:
        model.options["unpadded"] = False
        padded = fn()
        model.options["unpadded"] = True
        unpadded = fn()
    finally:
        model.options["unpadded"] = saved
    return padded, unpadded


def test_the_batch_really_mixes_lengths(models, texts):
    mask = models["bert_cat"].tokenize(*texts)["attention_mask"]
    lengths = mask.sum(1)
    assert lengths.min() < 40 and lengths.max() > 200 and mask.float().mean() < 0.8  # > 20% of the batch is padding


@pytest.mark.parametrize("arch", WIRED)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_scores_equal_the_padded_path(models, texts, arch, precision):
    model, tol = models[arch], FP32 if precision == "fp32" else BF16
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), ctx:
        padded, unpadded = _both(model, lambda: model.score(*texts))
    assert padded.shape == unpadded.shape == (24,)
    torch.testing.assert_close(unpadded.float(), padded.float(), **tol)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bert_dot_embeddings_equal_the_padded_path(minilm_path, texts, pooling, precision):
    model = BertDot.from_backbone(minilm_path, pooling=pooling, normalize=pooling == "mean", unpadded=False).eval()
    tol = FP32 if precision == "fp32" else BF16
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), ctx:
        padded, unpadded = _both(model, lambda: model.encode_docs(texts[1]))
    assert unpadded.shape == padded.shape == (24, 384)
    torch.testing.assert_close(unpadded.float(), padded.float(), **tol)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_colbert_token_vectors_equal_at_real_positions(models, texts, precision):
    model = models["colbert"]
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), ctx:
        (pv, pm), (uv, um) = _both(model, lambda: model.encode_docs(texts[1]))
    assert torch.equal(pm, um) and pv.shape == uv.shape
    real = pm.bool()
    if precision == "fp32":
        torch.testing.assert_close(uv[real], pv[real], **FP32)
    else:
        with torch.inference_mode():
            fp32 = model.encode_docs(texts[1])[0][real]
        assert_bf16_close(uv[real], pv[real], fp32)


def _first_layer_qkv(encoder, batch):
    """Real Q, K, V of layer 0 for a padded batch: padded [B, H, L, d] and packed [T, H, d]."""
    sa = bb.self_attention(bb.layer_list(encoder)[0])
    h = bb.embed(encoder, batch["input_ids"], batch.get("token_type_ids"))
    b, length, _ = h.shape
    heads, d = sa.num_attention_heads, sa.attention_head_size
    padded = [proj(h).view(b, length, heads, d).transpose(1, 2) for proj in (sa.query, sa.key, sa.value)]
    p = up.pack(batch["attention_mask"])
    packed = [t.transpose(1, 2).reshape(b * length, heads, d)[p.indices] for t in padded]
    return padded, packed, p, d


@pytest.mark.parametrize("kernel", ["nested_sdpa", "loop"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_cpu_kernel_equals_masked_padded_attention(models, texts, kernel, dtype):
    if kernel == "nested_sdpa" and not up.nested_sdpa_supported("cpu", dtype):
        pytest.skip(f"torch {torch.__version__} cannot run SDPA on nested jagged {dtype} tensors on CPU")
    model = models["bert_cat"]
    batch = model.tokenize(*texts)
    with torch.inference_mode():
        (q, k, v), packed, p, d = _first_layer_qkv(model.encoder, batch)
        def padded_sdpa(dt):
            mask = bb.extended_mask(batch["attention_mask"], dt)
            out = torch.nn.functional.scaled_dot_product_attention(q.to(dt), k.to(dt), v.to(dt), attn_mask=mask,
                                                                   scale=d ** -0.5)
            return out.transpose(1, 2).reshape(-1, q.shape[1], d)[p.indices]

        ref = padded_sdpa(torch.float32)
        got = up.varlen_attention(*(t.to(dtype) for t in packed), p, scale=d ** -0.5, kernel=kernel)
    assert got.dtype == dtype and got.shape == ref.shape
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref, **FP32)
    else:
        assert_bf16_close(got, padded_sdpa(dtype), ref)


@pytest.mark.parametrize("kernel", ["nested_sdpa", "loop"])
def test_whole_encoder_on_each_cpu_kernel(models, texts, kernel):
    if kernel == "nested_sdpa" and not up.nested_sdpa_supported("cpu", torch.float32):
        pytest.skip(f"torch {torch.__version__} cannot run SDPA on nested jagged tensors on CPU")
    encoder = models["bert_dot"].encoder
    batch = models["bert_dot"].tokenize(*texts)
    d_in = {k[2:]: v for k, v in batch.items() if k.startswith("d_")}
    with torch.inference_mode():
        ref = encoder(**d_in).last_hidden_state
        got = up.last_hidden_state(encoder, kernel=kernel, **d_in)
    real = d_in["attention_mask"].bool()
    torch.testing.assert_close(got[real], ref[real], **FP32)
    assert torch.count_nonzero(got[~real]) == 0


def _flash_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "flash-attn's varlen kernel needs CUDA; torch sees no GPU here"
    if up._flash_varlen() is None:
        return "flash_attn is not installed (pip install flash-attn on a CUDA machine)"
    return None


@pytest.mark.skipif(_flash_skip_reason() is not None, reason=str(_flash_skip_reason()))
def test_flash_attn_kernel_equals_the_loop_on_cuda(models, texts):
    model = models["bert_cat"]
    encoder = model.encoder.to("cuda")
    try:
        batch = {k: v.cuda() for k, v in model.tokenize(*texts).items()}
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            flash = up.cls_hidden(encoder, kernel="flash_attn", **batch)
            loop = up.cls_hidden(encoder, kernel="loop", **batch)
            assert up.attention_kernel(flash.new_zeros(1, 1, 8, dtype=torch.bfloat16)) == "flash_attn"
        torch.testing.assert_close(flash.float(), loop.float(), **BF16)
    finally:
        model.encoder.to("cpu")


def test_gradients_through_the_unpadded_path_equal_the_padded_ones(minilm_path, texts):
    torch.manual_seed(0)
    model = BertCat.from_backbone(minilm_path, unpadded=False).eval()  # eval: no dropout, grads still flow
    q, p = texts[0][:4], texts[1][:4]

    def grads():
        model.zero_grad()
        model.score(q, p).sum().backward()
        layer0 = bb.self_attention(bb.layer_list(model.encoder)[0])
        return torch.cat([model.classifier.weight.grad.flatten(), layer0.query.weight.grad.flatten(),
                          bb.embedding_module(model.encoder).position_embeddings.weight.grad.flatten()])

    padded, unpadded = _both(model, grads)
    assert padded.abs().max() > 0
    torch.testing.assert_close(unpadded, padded, **FP32)


def test_the_option_is_validated_by_name(minilm_path):
    with pytest.raises(ValueError, match="model option 'unpadded' must be \"auto\", true or false, got 'yes'"):
        BertCat.from_backbone(minilm_path, unpadded="yes")
    with pytest.raises(ValueError, match="'unpadded'"):
        ColBERT.from_backbone(minilm_path, unpadded=1)
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertModel

    cfg = DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64, num_labels=1)
    tokenizer = BertCat.from_backbone(minilm_path).tokenizer
    with pytest.raises(ValueError, match="model option 'unpadded' is true but .*DistilBert"):
        HFCrossEncoder(DistilBertForSequenceClassification(cfg), tokenizer, unpadded=True)
    with pytest.raises(ValueError, match="model option 'unpadded' is true but the encoder is 'distilbert'"):
        TinyBertCat(DistilBertModel(cfg), tokenizer, unpadded=True)
    auto = HFCrossEncoder(DistilBertForSequenceClassification(cfg), tokenizer)  # "auto": stays padded, no error
    assert auto.options["unpadded"] == "auto" and not up.active("auto", auto._unpadded_reason, auto)


def test_auto_is_padded_on_cpu_and_in_training_true_is_on_everywhere(models):
    model = models["bert_cat"]
    assert not up.active("auto", None, model)  # eval, but on CPU
    model.train()
    try:
        assert up.active(True, None, model) and not up.active("auto", None, model) and not up.active(False, None, model)
    finally:
        model.eval()


@pytest.mark.parametrize("arch", WIRED)
def test_a_folder_saved_before_the_option_existed_loads_as_auto(models, texts, arch, tmp_path):
    folder = models[arch].save_pretrained(tmp_path / arch)
    config = json.loads((folder / "kd_config.json").read_text())
    assert config["options"]["unpadded"] is False  # saved as given
    del config["options"]["unpadded"]  # what every folder written before the option looks like
    (folder / "kd_config.json").write_text(json.dumps(config))
    loaded = Ranker.from_pretrained(folder)
    assert type(loaded) is type(models[arch]) and loaded.options["unpadded"] == "auto"
    with torch.inference_mode():
        torch.testing.assert_close(loaded.score(*texts), models[arch].score(*texts), atol=0, rtol=0)
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "kd_config.json").read_text())["options"]["unpadded"] == "auto"
