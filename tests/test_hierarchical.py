"""Hierarchical attention networks (Yang et al. 2016, M14): attention pooling,
u = 0 -> masked mean, the full HAN's gradients, empty sentences, errors."""
import numpy as np
import pytest

from attention_np.mechanisms.hierarchical import AttentionPooling, HierarchicalAttention
from attention_np.train.gradcheck import TOLERANCE, check_module

B, T, D_IN, D_ATT = 3, 5, 4, 3
MASK = np.array([[True] * 3 + [False] * 2, [True] * 5, [True] + [False] * 4])

VOCAB, N_CLASSES = 8, 3
DOCS = np.array([[[1, 2, 3, 0], [4, 5, 0, 0], [0, 0, 0, 0]],
                 [[2, 2, 6, 1], [7, 7, 7, 7], [3, 1, 0, 0]]])      # (B=2, L=3, T=4); id 7 only in padding
WORD_MASK = DOCS != 0
WORD_MASK[1, 1] = False                                           # sentence (1, 1) is all padding too


@pytest.fixture
def data():
    rng = np.random.default_rng(4)
    return rng, rng.standard_normal((B, T, D_IN))


# ---------------------------------------------------------------- attention pooling
def test_pooling_matches_per_word_reference(data):
    rng, H = data
    pool = AttentionPooling(D_IN, D_ATT, rng=rng)
    pool.params["b"][...] = rng.standard_normal(D_ATT)
    p = pool.params
    out = pool(H, MASK)
    for b in range(B):
        valid = np.flatnonzero(MASK[b])
        e = np.array([np.tanh(p["W"].T @ H[b, t] + p["b"]) @ p["u"] for t in valid])  # u_it^T u_w
        alpha = np.exp(e) / np.exp(e).sum()
        np.testing.assert_allclose(pool.weights[b, valid], alpha, atol=1e-12)
        np.testing.assert_allclose(out[b], alpha @ H[b, valid], atol=1e-12)


@pytest.mark.parametrize("masked", [False, True])
def test_pooling_gradients(masked, data):
    rng, H = data
    pool = AttentionPooling(D_IN, D_ATT, rng=rng)
    pool.params["b"][...] = rng.standard_normal(D_ATT)
    errors = check_module(pool, H, MASK, details=True) if masked else check_module(pool, H, details=True)
    assert set(errors) == {"input0", "W", "b", "u"}
    assert max(errors.values()) < TOLERANCE, errors


def test_zero_context_vector_gives_the_masked_mean(data):
    """M14 (f): u = 0 makes every score 0, so the weights are uniform over the valid words."""
    rng, H = data
    pool = AttentionPooling(D_IN, D_ATT, rng=rng)
    pool.params["u"][...] = 0.0
    H_pad = H.copy()
    H_pad[~MASK] = 1e3                                            # padding must not leak into the mean
    out = pool(H_pad, MASK)
    lengths = MASK.sum(axis=1)
    expected = np.stack([H[b, :lengths[b]].mean(axis=0) for b in range(B)])
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_allclose(pool.weights, MASK / lengths[:, None], atol=1e-15)
    assert not np.allclose(pool(H_pad), expected)                 # without the mask it is not the same


def test_pooling_masked_words_get_zero_weight_and_gradient(data):
    rng, H = data
    pool = AttentionPooling(D_IN, D_ATT, rng=rng)
    pool(H, MASK)
    assert np.all(pool.weights[~MASK] == 0.0)
    dH = pool.backward(np.ones((B, D_IN)))
    assert np.all(dH[~MASK] == 0.0) and np.all(np.abs(dH[MASK]) > 0)
    empty = np.zeros((B, T), bool)
    out = pool(H, empty)
    assert np.all(out == 0.0) and np.all(pool.weights == 0.0)
    assert np.all(pool.backward(np.ones((B, D_IN))) == 0.0)


# ---------------------------------------------------------------- the full network
@pytest.mark.parametrize("encoder", ["gru", "lstm", "none"])
def test_han_gradients_reach_every_parameter(encoder):
    rng = np.random.default_rng(5)
    han = HierarchicalAttention(VOCAB, 3, 2, N_CLASSES, encoder=encoder, rng=rng)
    names = {name for name, _, _ in han.parameters()}
    expected = {"embedding.W", "word_attention.W", "word_attention.b", "word_attention.u",
                "sentence_attention.W", "sentence_attention.b", "sentence_attention.u",
                "classifier.W", "classifier.b"}
    if encoder != "none":
        expected |= {f"{level}_encoder.cells.{k}.{p}" for level in ("word", "sentence")
                     for k in (0, 1) for p in ("W", "U", "b")}
    assert names == expected
    for _, p, _ in han.parameters():                              # non-zero biases: a stricter check
        p += 0.1 * rng.standard_normal(p.shape)
    errors = check_module(han, DOCS, word_mask=WORD_MASK, details=True)
    assert set(errors) == expected
    assert max(errors.values()) < TOLERANCE, errors


def test_han_without_mask_gradients():
    han = HierarchicalAttention(VOCAB, 3, 2, N_CLASSES, rng=np.random.default_rng(6))
    errors = check_module(han, DOCS[:1], details=True)
    assert max(errors.values()) < TOLERANCE, errors


def test_han_weights_and_empty_sentences():
    han = HierarchicalAttention(VOCAB, 3, 2, N_CLASSES, rng=np.random.default_rng(7))
    logits = han(DOCS, WORD_MASK)
    assert logits.shape == (2, N_CLASSES) and np.all(np.isfinite(logits))
    assert han.word_weights.shape == DOCS.shape and han.sentence_weights.shape == (2, 3)
    assert np.all(han.word_weights[~WORD_MASK] == 0.0)
    has_word = WORD_MASK.any(axis=-1)
    np.testing.assert_array_equal(han.sentence_mask, has_word)
    np.testing.assert_allclose(han.word_weights.sum(axis=-1), has_word.astype(float), atol=1e-12)
    assert han.sentence_weights[0, 2] == 0.0 and han.sentence_weights[1, 1] == 0.0  # empty sentences
    np.testing.assert_allclose(han.sentence_weights.sum(axis=-1), 1.0)
    han.zero_grad()
    han.backward(np.ones((2, N_CLASSES)))
    assert all(np.all(np.isfinite(g)) for _, _, g in han.parameters())
    assert np.all(han.embedding.grads["W"][7] == 0.0)              # id 7 only appears in padding
    assert np.all(np.abs(han.embedding.grads["W"][6]) > 0)


def test_han_ignores_padding_content():
    han = HierarchicalAttention(VOCAB, 3, 2, N_CLASSES, rng=np.random.default_rng(8))
    logits = han(DOCS, WORD_MASK)
    other = np.where(WORD_MASK, DOCS, 5)                          # different ids in every padded slot
    np.testing.assert_allclose(han(other, WORD_MASK), logits, atol=1e-12)


def test_han_document_with_no_words_is_finite():
    han = HierarchicalAttention(VOCAB, 3, 2, N_CLASSES, rng=np.random.default_rng(9))
    mask = WORD_MASK.copy()
    mask[0] = False
    logits = han(DOCS, mask)
    np.testing.assert_allclose(logits[0], han.classifier.params["b"])   # zero document vector
    assert np.all(han.sentence_weights[0] == 0.0)
    han.backward(np.ones((2, N_CLASSES)))
    assert all(np.all(np.isfinite(g)) for _, _, g in han.parameters())


# ---------------------------------------------------------------- errors
def test_bad_inputs_raise_value_errors_naming_the_argument(data):
    rng, H = data
    pool = AttentionPooling(D_IN, D_ATT, rng=rng)
    with pytest.raises(ValueError, match=r"^H must have shape \(B, T, d_in=4\)"):
        pool(H[..., :2])
    with pytest.raises(ValueError, match=r"^mask must"):
        pool(H, MASK[:, :2])
    han = HierarchicalAttention(VOCAB, 3, 2, N_CLASSES, rng=rng)
    with pytest.raises(ValueError, match=r"^docs must have shape \(B, L, T\)"):
        han(DOCS[0])
    with pytest.raises(ValueError, match=r"^docs must be an integer array"):
        han(DOCS.astype(float))
    with pytest.raises(ValueError, match=r"^docs must hold ids in \[0, 8\)"):
        han(DOCS + 5)
    with pytest.raises(ValueError, match=r"^word_mask must"):
        han(DOCS, WORD_MASK[:, :2])
    with pytest.raises(ValueError, match=r"^encoder must be one of"):
        HierarchicalAttention(VOCAB, 3, 2, N_CLASSES, encoder="cnn")


def test_bad_upstream_gradients_raise_instead_of_broadcasting(data):
    rng, H = data
    pool = AttentionPooling(D_IN, D_ATT, rng=rng)
    pool(H, MASK)
    with pytest.raises(ValueError, match=r"^dpooled must have shape \(B=3, d_in=4\)"):
        pool.backward(np.ones((1, D_IN)))
    han = HierarchicalAttention(VOCAB, 3, 2, N_CLASSES, rng=rng)
    han(DOCS, WORD_MASK)
    with pytest.raises(ValueError, match=r"^dlogits must have shape \(B=2, n_classes=3\)"):
        han.backward(np.ones((1, N_CLASSES)))
    with pytest.raises(ValueError, match=r"^dlogits must have shape"):
        han.backward(np.ones((2, N_CLASSES + 1)))


def test_han_weights_attribute_is_the_last_attention_applied():
    """Contract: the last attention weights stay readable as .weights (here: the sentence level)."""
    han = HierarchicalAttention(VOCAB, 3, 2, N_CLASSES, encoder="none", rng=np.random.default_rng(10))
    han(DOCS, WORD_MASK)
    assert han.weights.shape == (2, 3)
    np.testing.assert_array_equal(han.weights, han.sentence_weights)
    # HAN-lite (no encoders): sentence vectors are word-attention pools of the embeddings, so the
    # sentence weights can be recomputed from the word weights independently
    E = han.embedding.params["W"]
    sentences = np.einsum("blt,bltd->bld", han.word_weights, E[DOCS])
    p = han.sentence_attention.params
    e = np.tanh(sentences @ p["W"] + p["b"]) @ p["u"]
    has_word = WORD_MASK.any(axis=-1)
    expected = np.where(has_word, np.exp(e), 0.0)
    np.testing.assert_allclose(han.weights, expected / expected.sum(axis=-1, keepdims=True), atol=1e-12)
