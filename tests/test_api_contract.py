"""The library's contract, walked as a user meets it (issue 15, items 5, 6 and 10).

Sizes that are not positive integers, empty sequences and non-positive bases
are named ValueErrors; every public class and function has a docstring, and the
docstrings cite papers and chapters, not working documents.
"""
import inspect
import re

import numpy as np
import pytest

import attention_np
from attention_np import LayerNorm, Linear, padding_mask, scaled_dot_product_attention
from attention_np import mechanisms
from attention_np.mechanisms import MultiHeadAttention, MultiHeadLatentAttention, SelfAttention, TinyTransformer
from attention_np.mechanisms.flash import flash_attention
from attention_np.mechanisms.linear_attention import linear_attention
from attention_np.mechanisms.multihead import repeat_kv
from attention_np.mechanisms.positional import rope
from attention_np.nn.recurrent import GRUCell


@pytest.mark.parametrize("make, message", [
    (lambda: MultiHeadAttention(0, 2), "d_model must be a positive integer, got 0"),
    (lambda: MultiHeadAttention(-8, 2), "d_model must be a positive integer, got -8"),
    (lambda: MultiHeadAttention(8, 2.5), "n_heads must be a positive integer, got 2.5"),
    (lambda: GRUCell(4, -2), "must be a positive integer, got -2"),
    (lambda: Linear(2.7, 4), "d_in must be a positive integer, got 2.7"),
    (lambda: Linear(True, 4), "d_in must be a positive integer, got True"),
    (lambda: TinyTransformer(vocab_size=5, d_model=8, n_heads=2, n_layers=-1, d_ff=8, max_len=4),
     "n_layers must be a positive integer, got -1"),
    (lambda: SelfAttention(4, 0), "d_k must be a positive integer, got 0"),
    (lambda: LayerNorm(4, eps=-1), "eps must be a positive number, got -1"),
    (lambda: MultiHeadAttention(8, 2, rope=True, rope_base=0.0), "rope_base must be a positive number"),
    (lambda: repeat_kv(np.ones((1, 2, 3, 4)), 0), "n_rep must be a positive integer, got 0"),
    (lambda: padding_mask(np.array([1, 2]), 2.5), "m must be a positive integer, got 2.5"),
    (lambda: rope(np.ones((3, 4)), base=0), "base must be a positive number, got 0"),
    (lambda: rope(np.ones((3, 4)), base=-10000.0), "base must be a positive number"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_sizes_are_named_errors(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_whole_float_sizes_are_accepted_as_integers():
    assert Linear(2.0, 3).d_in == 2


@pytest.mark.parametrize("fn", [
    lambda q, k, v: scaled_dot_product_attention(q, k, v),
    lambda q, k, v: flash_attention(q, k, v),
    lambda q, k, v: linear_attention(q, k, v),
], ids=["sdpa", "flash", "linear"])
def test_empty_sequences_and_zero_width_are_named_errors(fn):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 3, 4))
    with pytest.raises(ValueError, match=r"at least one key \(m >= 1\)"):
        fn(q, np.zeros((2, 0, 4)), np.zeros((2, 0, 5)))
    with pytest.raises(ValueError, match=r"d_k >= 1"):
        fn(np.zeros((2, 3, 0)), np.zeros((2, 4, 0)), np.zeros((2, 4, 5)))


@pytest.mark.parametrize("layer", [
    MultiHeadAttention(8, 2, rng=np.random.default_rng(0)),
    SelfAttention(8, 4, rng=np.random.default_rng(0)),
    MultiHeadLatentAttention(d_model=8, n_heads=2, d_head=4, d_latent_kv=4, d_latent_q=4, d_rope=2,
                             rng=np.random.default_rng(0)),
], ids=["mha", "self", "mla"])
def test_modules_refuse_an_empty_sequence(layer):
    with pytest.raises(ValueError, match="at least one token"):
        layer(np.zeros((2, 0, 8)))


def _public_objects():
    seen = {}
    for module in (attention_np, mechanisms):
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                seen[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return seen


def test_every_public_class_and_function_has_a_docstring():
    missing = [name for name, obj in _public_objects().items() if not inspect.getdoc(obj)]
    assert not missing, f"no docstring: {missing}"


# ---------------------------------------------------------------- item 8: small traps
def test_mechanisms_export_the_functions_not_their_modules():
    from attention_np.mechanisms import linear_attention as la, self_attention as sa
    assert callable(la) and callable(sa) and inspect.isfunction(la) and inspect.isfunction(sa)
    q = np.random.default_rng(0).standard_normal((2, 3, 4))
    assert la(q, q, q).shape == (2, 3, 4)
    from attention_np.mechanisms.linear_attention import linear_attention_backward   # the module still imports
    assert callable(linear_attention_backward)


def test_generate_refuses_what_it_cannot_do():
    model = TinyTransformer(vocab_size=5, d_model=8, n_heads=2, n_layers=1, d_ff=8, max_len=6, causal=True,
                            rng=np.random.default_rng(0))
    prompt = np.array([[1, 2]])
    with pytest.raises(ValueError, match=r"2 \+ n_new 6 feeds 7 tokens .* more than max_len=6"):
        model.generate(prompt, 6)
    with pytest.raises(ValueError, match="n_new must be a non-negative integer, got -2"):
        model.generate(prompt, -2)
    assert model.generate(prompt, 5).shape == (1, 7)            # the 7th token is never fed back


def test_cross_entropy_mask_must_be_boolean():
    from attention_np import cross_entropy
    logits, targets = np.zeros((2, 3)), np.array([0, 1])
    with pytest.raises(ValueError, match="mask must be a boolean array"):
        cross_entropy(logits, targets, mask=np.array([1, 0]))
    assert np.isclose(cross_entropy(logits, targets, mask=np.array([True, False])), np.log(3))


def test_softmax_of_a_scalar_is_a_named_error():
    from attention_np import softmax
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., m\)"):
        softmax(3.0)


def test_kv_cache_refuses_to_change_precision_silently():
    from attention_np.mechanisms import KVCache
    for max_len in (None, 8):
        cache = KVCache(max_len)
        cache.append(np.zeros((1, 1, 2, 4), np.float32), np.zeros((1, 1, 2, 4), np.float32))
        with pytest.raises(ValueError, match="cache's dtype float32, got float64"):
            cache.append(np.zeros((1, 1, 1, 4)), np.zeros((1, 1, 1, 4)))


def test_gumbel_softmax_needs_an_explicit_generator():
    from attention_np.mechanisms import gumbel_softmax
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator"):
        gumbel_softmax(np.zeros(3), 1.0, None)
    y, _ = gumbel_softmax(np.zeros(3), 1.0, np.random.default_rng(0))
    assert np.isclose(y.sum(), 1.0)


def test_kv_cache_owns_its_first_arrays():
    from attention_np.mechanisms import KVCache
    k = np.zeros((1, 1, 2, 4))
    cache = KVCache()
    cache.append(k, k.copy())
    k[...] = 7.0                                           # the caller reuses its buffer
    assert np.all(cache.keys == 0.0)


def test_hard_attention_sampling_needs_an_explicit_generator():
    from attention_np.mechanisms.hard import sample_categorical
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator"):
        sample_categorical(np.full((2, 3), 1 / 3), None)


def test_logsumexp_of_an_all_minus_inf_row_is_minus_inf_without_warning():
    import warnings

    from attention_np.nn.functional import logsumexp
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = logsumexp(np.array([[-np.inf, -np.inf], [0.0, 0.0]]))
    assert out[0] == -np.inf and np.isclose(out[1], np.log(2))


def test_generate_restores_training_mode_after_an_error():
    model = TinyTransformer(vocab_size=5, d_model=8, n_heads=2, n_layers=1, d_ff=8, max_len=6, causal=True,
                            rng=np.random.default_rng(0))
    model.train()

    def broken(*args, **kwargs):
        raise RuntimeError("boom")
    model.forward_cached = broken
    with pytest.raises(RuntimeError, match="boom"):
        model.generate(np.array([[1, 2]]), 2)
    assert model.training
