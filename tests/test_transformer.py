"""Feed-forward network, Transformer block and a tiny Transformer (chapter 20)."""
import numpy as np
import pytest

from attention_np.mechanisms.transformer import FeedForward, TinyTransformer, TransformerBlock
from attention_np.nn.functional import padding_mask
from attention_np.nn.losses import cross_entropy, cross_entropy_backward
from attention_np.train.data import reverse_task
from attention_np.train.gradcheck import TOLERANCE, check_module
from attention_np.train.optim import Adam


def _randomise(module, rng):
    """Non-trivial LayerNorm/bias values so their gradients are really tested."""
    for _, p, _ in module.parameters():
        p += 0.1 * rng.standard_normal(p.shape)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_feed_forward_gradient(activation):
    rng = np.random.default_rng(0)
    ffn = FeedForward(4, 6, activation=activation, rng=rng)
    _randomise(ffn, rng)
    x = rng.standard_normal((2, 3, 4))
    errors = check_module(ffn, x, details=True)
    assert set(errors) == {"input0", "W_1", "b_1", "W_2", "b_2"}
    assert max(errors.values()) < TOLERANCE, errors


def test_feed_forward_is_position_wise():
    rng = np.random.default_rng(1)
    ffn = FeedForward(4, 8, rng=rng)
    x = rng.standard_normal((2, 5, 4))
    np.testing.assert_allclose(ffn(x)[1, 3], ffn(x[1, 3]), atol=1e-15)
    with pytest.raises(ValueError, match="activation must be"):
        FeedForward(4, 8, activation="swish")


@pytest.mark.parametrize("pre_norm,causal,n_kv_heads,rope", [
    (True, False, None, False), (False, False, None, False), (False, True, 1, False), (True, True, 2, True)])
def test_block_gradient(pre_norm, causal, n_kv_heads, rope):
    rng = np.random.default_rng(2)
    block = TransformerBlock(8, 4, 12, n_kv_heads=n_kv_heads, causal=causal, pre_norm=pre_norm, rng=rng,
                             rope=rope)
    _randomise(block, rng)
    x = rng.standard_normal((2, 4, 8))
    mask = padding_mask(np.array([4, 3]), 4)
    errors = check_module(block, x, mask=mask, details=True)
    assert "attn.W_q" in errors and "ffn.W_1" in errors and "ln2.gamma" in errors
    assert max(errors.values()) < TOLERANCE, errors


class _FrozenDropoutBlock(TransformerBlock):
    """Same random dropout masks at every forward, so finite differences see one function."""

    def forward(self, x, **kwargs):
        self.drop1.rng, self.drop2.rng = np.random.default_rng(10), np.random.default_rng(11)
        return super().forward(x, **kwargs)


def test_block_gradient_with_dropout():
    rng = np.random.default_rng(3)
    block = _FrozenDropoutBlock(8, 2, 8, dropout=0.3, rng=rng)
    x = rng.standard_normal((2, 3, 8))
    assert check_module(block, x) < TOLERANCE
    out_train = block(x)
    block.eval()
    out_eval = block(x)
    assert np.max(np.abs(out_train - out_eval)) > 1e-3         # dropout active only in training
    block.train()


@pytest.mark.parametrize("pre_norm", [True, False])
def test_causal_block_ignores_future_tokens(pre_norm):
    rng = np.random.default_rng(4)
    block = TransformerBlock(8, 2, 16, causal=True, pre_norm=pre_norm, rng=rng, rope=True)
    x = rng.standard_normal((2, 6, 8))
    out = block(x)
    x2 = x.copy()
    x2[:, 3:] = rng.standard_normal((2, 3, 8))
    out2 = block(x2)
    np.testing.assert_array_equal(out2[:, :3], out[:, :3])
    assert np.max(np.abs(out2[:, 3:] - out[:, 3:])) > 1e-3
    encoder = TransformerBlock(8, 2, 16, causal=False, rng=np.random.default_rng(4))
    assert np.max(np.abs(encoder(x2)[:, :3] - encoder(x)[:, :3])) > 1e-3


@pytest.mark.parametrize("positional,causal", [("sinusoidal", False), ("learned", True), ("rope", True)])
def test_two_layer_model_gradient_end_to_end(positional, causal):
    rng = np.random.default_rng(5)
    model = TinyTransformer(vocab_size=5, d_model=4, n_heads=2, n_layers=2, d_ff=6, max_len=6, causal=causal,
                            positional=positional, rng=rng)
    _randomise(model, rng)
    ids = rng.integers(0, 5, size=(2, 4))
    mask = padding_mask(np.array([4, 3]), 4)
    errors = check_module(model, ids, mask=mask, details=True)
    assert "blocks.1.attn.W_o" in errors and "embed.W" in errors and "head.W" in errors
    assert ("W_pos" in errors) == (positional == "learned")
    assert max(errors.values()) < TOLERANCE, errors


def test_model_gradient_through_the_loss():
    rng = np.random.default_rng(6)
    model = TinyTransformer(6, 8, 2, 2, 8, max_len=5, causal=True, positional="rope", n_kv_heads=1,
                            pre_norm=False, rng=rng)
    ids = rng.integers(1, 6, size=(2, 5))
    targets = np.roll(ids, -1, axis=1)
    logits = model(ids)
    model.zero_grad()
    model.backward(cross_entropy_backward(logits, targets))
    W = model.blocks[0].attn.params["W_v"]
    analytic = model.blocks[0].attn.grads["W_v"][1, 2]
    eps, old = 1e-6, W[1, 2]
    W[1, 2] = old + eps
    plus = cross_entropy(model(ids), targets)
    W[1, 2] = old - eps
    minus = cross_entropy(model(ids), targets)
    W[1, 2] = old
    assert abs((plus - minus) / (2 * eps) - analytic) < 1e-8


@pytest.mark.parametrize("positional", ["sinusoidal", "learned", "rope"])
def test_cached_generation_matches_full_forward(positional):
    rng = np.random.default_rng(7)
    model = TinyTransformer(7, 8, 2, 2, 16, max_len=8, causal=True, positional=positional, n_kv_heads=1, rng=rng)
    _randomise(model, rng)
    ids = rng.integers(0, 7, size=(2, 8))
    full = model(ids)
    caches = model.new_caches()
    parts = [model.forward_cached(ids[:, :3], caches)]
    for t in range(3, 8):
        parts.append(model.forward_cached(ids[:, t:t + 1], caches))
    assert np.max(np.abs(np.concatenate(parts, axis=1) - full)) < 1e-12
    # greedy generation with the cache = greedy argmax of full forwards
    out = model.generate(ids[:, :2], 4)
    ref = ids[:, :2]
    for _ in range(4):
        ref = np.concatenate([ref, np.argmax(model(ref)[:, -1], -1)[:, None]], axis=1)
    np.testing.assert_array_equal(out, ref)


def test_generate_uses_only_the_positions_it_feeds():
    """The last generated token is returned, never fed back: prompt + n_new - 1 <= max_len is enough."""
    rng = np.random.default_rng(11)
    model = TinyTransformer(7, 8, 2, 2, 16, max_len=5, causal=True, positional="rope", rng=rng)
    _randomise(model, rng)
    prompt = rng.integers(0, 7, size=(3, 2))
    out = model.generate(prompt, 4)                              # feeds 2 + 3 = 5 tokens, returns 6
    assert out.shape == (3, 6)
    ref = prompt
    for _ in range(4):                                           # the full forward never sees more than 5 tokens
        ref = np.concatenate([ref, np.argmax(model(ref)[:, -1], -1)[:, None]], axis=1)
    np.testing.assert_array_equal(out, ref)
    assert model.generate(rng.integers(0, 7, size=(1, 5)), 1).shape == (1, 6)   # a full-length prompt, one answer
    assert model.generate(rng.integers(0, 7, size=(1, 5)), 0).shape == (1, 5)
    with pytest.raises(ValueError, match=r"prompt length 2 \+ n_new 5 feeds 6 tokens .* more than max_len=5"):
        model.generate(prompt, 5)
    with pytest.raises(ValueError, match=r"prompt length 6 \+ n_new 0 feeds 6 tokens"):
        model.generate(rng.integers(0, 7, size=(1, 6)), 0)


def test_model_bad_input():
    model = TinyTransformer(5, 8, 2, 1, 8, max_len=4, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="ids must hold ids in"):
        model(np.array([[1, 7]]))
    with pytest.raises(ValueError, match=r"ids must have shape \(B, n\) with n <= max_len=4"):
        model(np.ones((1, 5), dtype=int))
    with pytest.raises(ValueError, match="positional must be"):
        TinyTransformer(5, 8, 2, 1, 8, max_len=4, positional="alibi")
    with pytest.raises(ValueError, match="cached decoding needs a causal model"):
        model.forward_cached(np.ones((1, 1), dtype=int), model.new_caches())


def test_learns_sequence_reversal():
    """Encoder-only: the output at position t is the input at position L-1-t."""
    rng = np.random.default_rng(0)
    L, vocab = 6, 6
    model = TinyTransformer(vocab, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=L, causal=False,
                            positional="sinusoidal", rng=rng)
    opt = Adam(model, lr=0.01)
    for _ in range(100):
        batch = reverse_task(rng, 32, L, L, vocab)
        logits = model(batch.inputs)
        model.zero_grad()
        model.backward(cross_entropy_backward(logits, batch.targets))
        opt.step()
    held_out = reverse_task(np.random.default_rng(12345), 500, L, L, vocab)
    accuracy = np.mean(np.argmax(model(held_out.inputs), axis=-1) == held_out.targets)
    assert accuracy >= 0.95, accuracy


def test_qkv_dimension_norms_match_the_projections():
    from attention_np.mechanisms.transformer import qkv_dimension_norms
    rng = np.random.default_rng(8)
    model = TinyTransformer(6, 8, 2, 2, 8, max_len=5, causal=True, positional="rope", n_kv_heads=1, rng=rng)
    _randomise(model, rng)
    ids = rng.integers(0, 6, size=(3, 5))
    norms = qkv_dimension_norms(model, ids)
    assert norms.shape == (2, 3, 2, 4)
    # layer 1 by hand: its attention input is LN_1 of block 0's output
    h = model.blocks[0](model.embed(ids) * model.embed_scale, positions=np.arange(5))
    x = model.blocks[1].ln1(h)
    attn = model.blocks[1].attn
    k = x @ attn.params["W_k"] + attn.params["b_k"]              # (B, n, 4): one key head
    np.testing.assert_allclose(norms[1, 1, 0], np.sqrt(np.sum(k ** 2, axis=(0, 1))), rtol=1e-12)
    np.testing.assert_allclose(norms[1, 1, 1], norms[1, 1, 0], rtol=0)   # the shared key head, repeated
    q = (x @ attn.params["W_q"] + attn.params["b_q"])[..., 4:]   # head 1
    np.testing.assert_allclose(norms[1, 0, 1], np.sqrt(np.sum(q ** 2, axis=(0, 1))), rtol=1e-12)
    # a rotary pair's summed squares are the same after the rotation (the cached, rotated keys)
    k_rot = attn.cache[6]                                        # (B, H_kv, n, d_head), rotated
    pair = np.sum(k_rot ** 2, axis=(0, 2)).reshape(1, 2, 2).sum(-1)
    np.testing.assert_allclose(pair[0], (norms[1, 1, 0] ** 2).reshape(2, 2).sum(-1), rtol=1e-10)
    with pytest.raises(ValueError, match="model must be a TinyTransformer"):
        qkv_dimension_norms(object(), ids)
