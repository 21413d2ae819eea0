"""Float32 in, float32 out, for every module (issue 15, item 4).

Parameters are float64 master weights unless converted with ``astype``; a
module returns the floating dtype of its inputs, and ``backward`` returns input
gradients in that dtype, while parameter gradients stay in the parameters' dtype.
"""
import numpy as np
import pytest

from attention_np import LayerNorm, Linear
from attention_np.mechanisms import (
    AdditiveAttention, CrossAttention, FeedForward, GlobalAttention, LinformerAttention, MultiHeadAttention,
    MultiHeadLatentAttention, RelativeSelfAttention, SelfAttention, TinyTransformer, TransformerBlock,
)


def _r():
    return np.random.default_rng(3)


CASES = {
    "Linear": (lambda r: Linear(8, 4, rng=r), lambda x, c: (x,)),
    "LayerNorm": (lambda r: LayerNorm(8), lambda x, c: (x,)),
    "SelfAttention": (lambda r: SelfAttention(8, 4, rng=r), lambda x, c: (x,)),
    "MultiHeadAttention": (lambda r: MultiHeadAttention(8, 2, rng=r), lambda x, c: (x,)),
    "GQA cross": (lambda r: MultiHeadAttention(8, 4, n_kv_heads=2, rng=r), lambda x, c: (x, c)),
    "MultiHeadLatentAttention": (lambda r: MultiHeadLatentAttention(d_model=8, n_heads=2, d_head=4, d_latent_kv=4,
                                                                    d_latent_q=4, d_rope=2, rng=r), lambda x, c: (x,)),
    "CrossAttention": (lambda r: CrossAttention(8, 8, 4, rng=r), lambda x, c: (x, c)),
    "AdditiveAttention": (lambda r: AdditiveAttention(8, 8, 6, rng=r), lambda x, c: (x, c, c)),
    "GlobalAttention": (lambda r: GlobalAttention(8, score="general", rng=r), lambda x, c: (x[:, 0], c)),
    "FeedForward": (lambda r: FeedForward(8, 16, rng=r), lambda x, c: (x,)),
    "TransformerBlock": (lambda r: TransformerBlock(8, 2, 16, causal=True, rng=r), lambda x, c: (x,)),
    "LinformerAttention": (lambda r: LinformerAttention(8, 5, 3, rng=r), lambda x, c: (x,)),
    "RelativeSelfAttention": (lambda r: RelativeSelfAttention(8, 4, 2, rng=r), lambda x, c: (x,)),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_module_keeps_the_input_dtype(name, dtype):
    make, inputs = CASES[name]
    r = _r()
    layer = make(r)
    x = r.standard_normal((2, 5, 8)).astype(dtype)
    c = r.standard_normal((2, 6, 8)).astype(dtype)
    y = layer(*inputs(x, c))
    assert y.dtype == dtype, f"{name}: {np.dtype(dtype).name} in, {y.dtype} out"
    assert np.all(np.isfinite(y))
    grads = layer.backward(np.ones_like(y))
    grads = grads if isinstance(grads, tuple) else (grads,)
    for g in grads:
        if g is not None:
            assert g.dtype == dtype, f"{name}: input gradient is {g.dtype} for {np.dtype(dtype).name} input"
    for pname, p, g in layer.parameters():
        assert p.dtype == g.dtype == np.float64, f"{name}.{pname}: parameters stay float64 master weights"


def test_float32_result_matches_the_float64_computation():
    r = _r()
    layer = MultiHeadAttention(8, 2, rng=r)
    x = r.standard_normal((2, 5, 8))
    np.testing.assert_allclose(layer(x.astype(np.float32)), layer(x).astype(np.float32), rtol=1e-5, atol=1e-6)


def test_astype_converts_the_parameters_and_the_computation():
    r = _r()
    model = TinyTransformer(vocab_size=7, d_model=8, n_heads=2, n_layers=1, d_ff=16, max_len=10, rng=r)
    ids = r.integers(0, 7, (2, 5))
    assert model(ids).dtype == np.float64                 # integer ids: the parameters' dtype
    model.astype(np.float32)
    logits = model(ids)
    assert logits.dtype == np.float32
    model.backward(np.ones_like(logits))
    assert all(g.dtype == np.float32 for _, _, g in model.parameters())


@pytest.mark.parametrize("name", sorted(CASES))
def test_backward_before_forward_and_wrong_dout_are_named_errors(name):
    """Issue 15, item 7: no 'cannot unpack NoneType' and no raw NumPy broadcast errors."""
    make, inputs = CASES[name]
    r = _r()
    layer = make(r)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.backward(np.ones((2, 5, 4)))
    y = layer(*inputs(r.standard_normal((2, 5, 8)), r.standard_normal((2, 6, 8))))
    wrong = np.ones(y.shape[:-1] + (y.shape[-1] + 1,))
    before = [g.copy() for _, _, g in layer.parameters()]
    with pytest.raises(ValueError, match=r"must have shape .* got"):
        layer.backward(wrong)
    assert all(np.array_equal(b, g) for b, (_, _, g) in zip(before, layer.parameters())), \
        "a refused backward must not change the gradient buffers"


def test_restored_cache_of_another_step_skips_the_shape_check():
    """The documented pattern: several forwards of different shapes, caches restored latest first."""
    layer = Linear(3, 2, rng=_r())
    caches, outs = [], []
    for n in (4, 1):
        outs.append(layer(np.ones((n, 3))))
        caches.append(layer.cache)
    for cache, out in zip(reversed(caches), reversed(outs)):
        layer.cache = cache
        assert layer.backward(np.ones_like(out)).shape == (out.shape[0], 3)


def test_a_transposed_dout_that_numpy_would_reshape_silently_is_refused():
    layer = Linear(3, 2, rng=_r())
    y = layer(np.ones((4, 3)))                             # (4, 2)
    with pytest.raises(ValueError, match=r"dout must have shape \(4, 2\)"):
        layer.backward(np.ones((2, 4)))                    # reshape(-1, 2) would accept it
