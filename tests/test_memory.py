"""Tests for End-To-End Memory Networks (MECHANISMS.md M7)."""
import numpy as np
import pytest

from attention_np.mechanisms.memory import MemoryNetwork, position_encoding
from attention_np.nn.losses import cross_entropy, cross_entropy_backward
from attention_np.train.gradcheck import TOLERANCE, check_module
from attention_np.train.optim import Adam

V, D, N, J = 9, 4, 5, 3


def _data(seed=0, B=2, n=4):
    rng = np.random.default_rng(seed)
    story = rng.integers(1, V, size=(B, n, J))
    story[0, 1, 2] = 0                    # a padded (nil) word
    query = rng.integers(1, V, size=(B, J))
    query[1, 0] = 0
    mask = np.ones((B, n), dtype=bool)
    mask[1, 2:] = False                   # a short story: two empty memory slots
    return story, query, mask


# ------------------------------------------------------------------ position encoding
def test_position_encoding_verified_numbers():
    l = position_encoding(4, 2)
    assert l.shape == (4, 2)              # rows = word position j, columns = embedding dimension k
    # [v] M7 f, printed there as the d x J matrix l_kj: [[0.5]*4, [0.25, 0.5, 0.75, 1.0]]
    np.testing.assert_allclose(l.T, [[0.5, 0.5, 0.5, 0.5], [0.25, 0.5, 0.75, 1.0]], atol=1e-15)


def test_position_encoding_formula_with_one_based_indices():
    J_, d_ = 3, 5
    l = position_encoding(J_, d_)
    for j in range(1, J_ + 1):            # an independent, loop-by-loop transcription of the paper's formula
        for k in range(1, d_ + 1):
            assert l[j - 1, k - 1] == pytest.approx((1 - j / J_) - (k / d_) * (1 - 2 * j / J_), abs=1e-15)
    with pytest.raises(ValueError, match="sentence_len"):
        position_encoding(0, 3)


def test_position_encoding_distinguishes_word_order():
    net = MemoryNetwork(V, D, 1, N, J, rng=np.random.default_rng(0))
    story = np.array([[[1, 2, 3], [3, 2, 1]]])
    query = np.array([[4, 5, 6]])
    net.forward(story, query)
    p = net.hop_weights[0][0]
    assert abs(p[0] - p[1]) > 1e-6       # a bag of words would give the two sentences equal scores


# ------------------------------------------------------------------ weight tying
def test_adjacent_tying_has_k_plus_one_embedding_tables():
    for K in (1, 2, 3):
        net = MemoryNetwork(V, D, K, N, J, tying="adjacent", rng=np.random.default_rng(0))
        tables = [name for name, p in net.params.items() if p.shape == (V, D)]
        assert len(tables) == K + 1                                   # 4 for K = 3 [v] M7 f
        r = net.roles
        role_tables = {r["B"], r["W"], *r["A"], *r["C"]}
        assert role_tables == set(tables)
        assert len({id(net.params[name]) for name in role_tables}) == K + 1
        assert r["B"] == r["A"][0]                                    # B = A^1
        assert r["W"] == r["C"][-1]                                   # W^T = C^K
        assert all(r["A"][k + 1] == r["C"][k] for k in range(K - 1))  # A^{k+1} = C^k


def test_layerwise_tying_shares_a_and_c_across_hops():
    net = MemoryNetwork(V, D, 3, N, J, tying="layerwise", rng=np.random.default_rng(0))
    assert set(net.params) == {"A", "B", "C", "W", "H", "T_A", "T_C"}
    assert set(net.roles["A"]) == {"A"} and set(net.roles["C"]) == {"C"}
    assert net.params["H"].shape == (D, D)


def test_forward_matches_an_independent_one_hop_computation():
    story, query, _ = _data(3)
    net = MemoryNetwork(V, D, 1, N, J, rng=np.random.default_rng(1))
    logits = net.forward(story, query)
    A, C, TA, TC = (net.params[k] for k in ("A_1", "C_1", "T_A_1", "T_C_1"))
    l = position_encoding(J, D)
    n = story.shape[1]
    for b in range(story.shape[0]):      # plain loops, straight from the paper's equations
        u = sum(l[j] * A[w] for j, w in enumerate(query[b]) if w != 0)                         # B = A^1
        m = [sum(l[j] * A[w] for j, w in enumerate(story[b, i]) if w != 0) + TA[i] for i in range(n)]
        c = [sum(l[j] * C[w] for j, w in enumerate(story[b, i]) if w != 0) + TC[i] for i in range(n)]
        s = np.array([u @ mi for mi in m])
        p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        o = sum(pi * ci for pi, ci in zip(p, c))
        np.testing.assert_allclose(net.hop_weights[0][b], p, rtol=1e-12)
        np.testing.assert_allclose(logits[b], C @ (u + o), rtol=1e-12)                      # W = C^K


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("tying", ["adjacent", "layerwise"])
@pytest.mark.parametrize("n_hops", [1, 3])
@pytest.mark.parametrize("use_mask", [False, True])
def test_gradcheck_every_parameter(tying, n_hops, use_mask):
    story, query, mask = _data()
    net = MemoryNetwork(V, D, n_hops, N, J, tying=tying, rng=np.random.default_rng(1), init_std=0.5)
    kwargs = {"mask": mask} if use_mask else {}
    errors = check_module(net, story, query, details=True, **kwargs)
    assert set(errors) == set(net.params)
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("tying", ["adjacent", "layerwise"])
@pytest.mark.parametrize("use_mask", [False, True])
def test_gradcheck_linear_start(tying, use_mask):
    """Linear start (the paper's bAbI training): no hop softmaxes, p^k = u^k . m_i; every gradient still checks."""
    story, query, mask = _data()
    net = MemoryNetwork(V, D, 3, N, J, tying=tying, rng=np.random.default_rng(1), init_std=0.5)
    net.linear_start = True
    kwargs = {"mask": mask} if use_mask else {}
    errors = check_module(net, story, query, details=True, **kwargs)
    assert set(errors) == set(net.params)
    assert max(errors.values()) < TOLERANCE, errors


def test_linear_start_weights_are_the_raw_scores_and_the_flag_switches_back():
    story, query, mask = _data()
    net = MemoryNetwork(V, D, 1, N, J, rng=np.random.default_rng(1), init_std=0.5)
    net.linear_start = True
    net.forward(story, query, mask=mask)
    A, TA = net.params["A_1"], net.params["T_A_1"]
    l = position_encoding(J, D)
    keep_s, keep_q = (story != 0)[..., None], (query != 0)[..., None]
    u = np.einsum("bjd,jd->bd", A[query] * keep_q, l)                          # B = A^1
    m = np.einsum("bnjd,jd->bnd", A[story] * keep_s, l) + TA[:story.shape[1]]
    np.testing.assert_allclose(net.hop_weights[0], np.einsum("bnd,bd->bn", m, u) * mask, rtol=1e-12, atol=1e-15)
    assert not np.allclose(net.hop_weights[0].sum(axis=1), 1.0)               # not a distribution
    net.linear_start = False
    net.forward(story, query, mask=mask)
    np.testing.assert_allclose(net.hop_weights[0].sum(axis=1), 1.0, rtol=1e-12)


def test_gradcheck_catches_a_softmax_jacobian_left_in_linear_start():
    story, query, _ = _data()
    net = MemoryNetwork(V, D, 2, N, J, rng=np.random.default_rng(1), init_std=0.5)
    net.linear_start = True
    real = MemoryNetwork.forward

    def forward_then_forget(self, *args, **kw):     # the backward believes the softmax was there
        out = real(self, *args, **kw)
        self.cache = self.cache[:-1] + (False,)
        return out
    net.forward = forward_then_forget.__get__(net)
    assert check_module(net, story, query) > 1e-3


def test_scatter_add_counts_repeated_words():
    """A word used twice in one sentence gets both contributions (plain fancy-index += would keep one)."""
    net = MemoryNetwork(V, D, 1, N, J, rng=np.random.default_rng(1))
    story = np.array([[[5, 5, 5]]])
    query = np.array([[1, 2, 3]])
    net.forward(story, query)
    G = np.random.default_rng(3).standard_normal((1, V))
    net.backward(G)
    errors = check_module(net, story, query, details=True)
    assert errors["A_1"] < TOLERANCE and errors["C_1"] < TOLERANCE


def test_tied_table_accumulates_every_role():
    """With adjacent tying and K = 2, C_1 is both C^1 and A^2; its gradient is the sum of both roles."""
    story, query, _ = _data(4)
    net = MemoryNetwork(V, D, 2, N, J, rng=np.random.default_rng(1), init_std=0.5)
    G = np.random.default_rng(2).standard_normal((2, V))
    net.forward(story, query)
    net.backward(G)
    total = net.grads["C_1"].copy()
    # untie: give A^2 its own copy, recompute; the two copies' gradients add up to the tied one
    net.params["A_2_copy"] = net.params["C_1"].copy()
    net.grads["A_2_copy"] = np.zeros_like(net.grads["C_1"])
    net.roles["A"][1] = "A_2_copy"
    net.zero_grad()
    net.forward(story, query)
    net.backward(G)
    as_c1, as_a2 = net.grads["C_1"], net.grads["A_2_copy"]
    assert np.abs(as_c1).max() > 0 and np.abs(as_a2).max() > 0
    np.testing.assert_allclose(as_c1 + as_a2, total, rtol=1e-12, atol=1e-15)


def test_gradcheck_fails_for_a_wrong_backward(monkeypatch):
    story, query, _ = _data()
    net = MemoryNetwork(V, D, 2, N, J, rng=np.random.default_rng(1), init_std=0.5)
    real = MemoryNetwork._embed_backward
    monkeypatch.setattr(MemoryNetwork, "_embed_backward",
                        lambda self, name, ids, keep, dout: real(self, name, ids, keep, 0.5 * dout))
    assert check_module(net, story, query) > 1e-3


def test_masked_slots_and_nil_words_get_zero_weight_and_zero_gradient():
    story, query, mask = _data()
    mask[:, 3] = False                                         # slot 3 empty in every story
    net = MemoryNetwork(V, D, 2, N, J, rng=np.random.default_rng(1))
    logits = net.forward(story, query, mask=mask)
    assert len(net.hop_weights) == 2
    for p in net.hop_weights:
        assert p.shape == story.shape[:2]
        assert np.all(p[~mask] == 0.0)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    dlogits = np.ones_like(logits)
    dlogits[:, 0] = 0.0                  # C_2 is also the answer matrix W; keep the nil *class* out of it
    net.backward(dlogits)
    for name in ("T_A_1", "T_C_1", "T_C_2"):
        assert np.all(net.grads[name][3] == 0.0) and np.all(net.grads[name][4] == 0.0)   # masked / unused slots
        assert np.any(net.grads[name][0] != 0.0)
    for name in ("A_1", "C_1", "C_2"):
        assert np.all(net.grads[name][0] == 0.0)               # the nil word (id 0) never learns
    # words of a masked sentence do not change the output
    moved = story.copy()
    moved[1, 2:] = 7
    np.testing.assert_array_equal(net.forward(moved, query, mask=mask), logits)


def test_float32_stays_float32():
    story, query, mask = _data()
    net = MemoryNetwork(V, D, 2, N, J, tying="layerwise", rng=np.random.default_rng(1)).astype(np.float32)
    logits = net.forward(story, query, mask=mask)
    assert logits.dtype == np.float32 and net.hop_weights[0].dtype == np.float32
    net.backward(np.ones_like(logits))
    assert all(g.dtype == np.float32 for _, _, g in net.parameters())


def test_bad_inputs_raise_value_error_naming_the_argument():
    story, query, mask = _data()
    net = MemoryNetwork(V, D, 2, N, J, rng=np.random.default_rng(1))
    with pytest.raises(ValueError, match="story"):
        net.forward(story[..., :2], query)                     # wrong J
    with pytest.raises(ValueError, match="story"):
        net.forward(np.zeros((2, N + 1, J), dtype=int), query)  # more sentences than memory slots
    with pytest.raises(ValueError, match="story"):
        net.forward(story.astype(float), query)
    with pytest.raises(ValueError, match="story"):
        net.forward(story + V, query)                          # ids out of range
    with pytest.raises(ValueError, match="query"):
        net.forward(story, query[:1])
    with pytest.raises(ValueError, match="mask"):
        net.forward(story, query, mask=mask[:, :2])
    net.forward(story, query)
    with pytest.raises(ValueError, match="dlogits"):
        net.backward(np.ones((2, V + 1)))
    with pytest.raises(ValueError, match="tying"):
        MemoryNetwork(V, D, 2, N, J, tying="none")


# ------------------------------------------------------------------ learning
def test_memn2n_learns_a_one_supporting_fact_task():
    """bAbI-like task 1: "<person> went <place>" sentences; "where is <person>?" -> the latest place.

    The latest mention wins, so the temporal vectors T_A, T_C must learn the order.
    """
    rng = np.random.default_rng(0)
    n_people, n_places, n_slots = 4, 4, 5
    WENT = n_people + 1
    PLACE0 = WENT + 1
    WHERE, IS = PLACE0 + n_places, PLACE0 + n_places + 1
    vocab = IS + 1                                              # id 0 = nil

    def make(n):
        lengths = rng.integers(2, n_slots + 1, size=n)
        mask = np.arange(n_slots)[None, :] < lengths[:, None]                  # (n, N)
        people = rng.integers(1, n_people + 1, size=(n, n_slots))
        places = rng.integers(PLACE0, PLACE0 + n_places, size=(n, n_slots))
        story = np.stack([people, np.full((n, n_slots), WENT), places], axis=-1) * mask[..., None]
        who = people[np.arange(n), (rng.random(n) * lengths).astype(int)]      # someone in the story
        mentions = (people == who[:, None]) & mask
        latest = n_slots - 1 - np.argmax(mentions[:, ::-1], axis=1)            # supporting fact
        query = np.stack([np.full(n, WHERE), np.full(n, IS), who], axis=-1)
        return story, query, places[np.arange(n), latest], mask, latest

    net = MemoryNetwork(vocab, 20, 1, n_slots, 3, rng=rng)
    opt = Adam(net, lr=0.02)
    for _ in range(200):
        story, query, answer, mask, _ = make(32)
        opt.zero_grad()
        net.backward(cross_entropy_backward(net.forward(story, query, mask=mask), answer))
        opt.step()
    story, query, answer, mask, latest = make(1000)
    logits = net.forward(story, query, mask=mask)
    accuracy = np.mean(logits.argmax(axis=1) == answer)
    on_support = np.mean(net.hop_weights[0].argmax(axis=1) == latest)
    assert cross_entropy(logits, answer) < 0.2
    assert accuracy >= 0.95, accuracy
    assert on_support >= 0.9, on_support


def test_weights_attribute_is_the_last_hop():
    """Contract: the last attention weights stay readable as .weights (the last hop's p^K)."""
    story, query, mask = _data()
    net = MemoryNetwork(V, D, 3, N, J, rng=np.random.default_rng(1))
    net.forward(story, query, mask=mask)
    assert len(net.hop_weights) == 3 and net.weights.shape == story.shape[:2]
    np.testing.assert_array_equal(net.weights, net.hop_weights[-1])
    assert not np.allclose(net.hop_weights[0], net.hop_weights[-1])    # the hops really differ
