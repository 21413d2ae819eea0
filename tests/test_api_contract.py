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


# ================================================================ item 9: one API, not twenty
# The conventions written in attention_np/__init__.py ("The contract ...") and the README's
# "Conventions", walked over every public functional backward and every public Module.
import dataclasses  # noqa: E402
import importlib  # noqa: E402
import pkgutil  # noqa: E402
from typing import Callable  # noqa: E402

from attention_np.nn.module import Module  # noqa: E402
from attention_np.train.gradcheck import TOLERANCE, check_module  # noqa: E402

_LIBRARY_PACKAGES = ("attention_np.nn", "attention_np.mechanisms")
# Losses start the chain: their backward takes the forward's arguments and ``dloss=1.0`` (see the contract).
_LOSS_BACKWARDS = {"cross_entropy_backward", "mse_backward"}


def _library_modules():
    for package_name in _LIBRARY_PACKAGES:
        package = importlib.import_module(package_name)
        yield package
        for info in pkgutil.iter_modules(package.__path__, package_name + "."):
            yield importlib.import_module(info.name)


def _public_backwards():
    """Every public function named *_backward, by module-qualified name."""
    found = {}
    for module in _library_modules():
        for name, obj in vars(module).items():
            if (inspect.isfunction(obj) and name.endswith("_backward") and not name.startswith("_")
                    and obj.__module__ == module.__name__):
                found[name] = obj
    return found


def _public_module_classes():
    found = {}
    for module in _library_modules():
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Module) and obj is not Module
                    and not name.startswith("_") and obj.__module__ == module.__name__):
                found[name] = obj
    return found


@dataclasses.dataclass
class Pair:
    """A forward, its inputs (by the forward's argument names, in its order) and what the backward must return."""

    backward: str                     # name of the public *_backward function
    forward: Callable                 # the forward whose argument order the backward follows
    inputs: dict                      # the forward's arguments by name (arrays and settings)
    results: tuple                    # names of what the forward returns, in order
    grads: tuple                      # the forward arguments that receive a gradient, in the forward's order
    upstream: tuple = (0,)            # which results the upstream gradient(s) belong to
    extra: dict = dataclasses.field(default_factory=dict)   # settings only the backward takes
    run: Callable | None = None       # how to run the forward when not forward(**inputs) (a fixed rng)

    def call(self, inputs):
        out = self.run(inputs) if self.run is not None else self.forward(**inputs)
        return out if isinstance(out, tuple) else (out,)


def _r(*shape, seed=[0]):             # noqa: B006 - a counter: every array differs
    seed[0] += 1
    return np.random.default_rng(seed[0]).standard_normal(shape)


def _pairs():
    from attention_np.mechanisms import adaptive, additive, cross, flash, global_attention, hard, hierarchical
    from attention_np.mechanisms import local, multihead, pooling, positional, scaled_dot_product as sdp
    from attention_np.mechanisms import soft, sparse, temporal
    from attention_np.nn import functional as F, recurrent
    lin = importlib.import_module("attention_np.mechanisms.linear_attention")   # the package attribute is the function
    sa = importlib.import_module("attention_np.mechanisms.self_attention")

    def attend_and_combine(weights, source, h_t, W_c):
        """The forward of output_backward: c = sum_s a_s h_s, h~ = tanh([c; h_t] W_c)."""
        context = np.einsum("bs,bsd->bd", weights, source)
        return context, global_attention.attentional_hidden(context, h_t, W_c)

    B, n, m, d = 2, 3, 4, 4
    qkv = lambda: dict(q=_r(B, n, d), k=_r(B, m, d), v=_r(B, m, 5))   # noqa: E731
    x_pos = np.abs(_r(B, n, d)) + 0.1
    pairs = [
        Pair("softmax_backward", F.softmax, dict(x=_r(B, n), axis=-1), ("y",), ("x",)),
        Pair("log_softmax_backward", F.log_softmax, dict(x=_r(B, n), axis=-1), ("y",), ("x",)),
        Pair("tanh_backward", F.tanh, dict(x=_r(B, n)), ("y",), ("x",)),
        Pair("sigmoid_backward", F.sigmoid, dict(x=_r(B, n)), ("y",), ("x",)),
        Pair("relu_backward", F.relu, dict(x=x_pos * np.sign(_r(B, n, d))), ("y",), ("x",)),
        Pair("gelu_backward", F.gelu, dict(x=_r(B, n)), ("y",), ("x",)),
        Pair("elu_backward", F.elu, dict(x=_r(B, n), alpha=0.7), ("y",), ("x",)),
        Pair("elu_plus_one_backward", F.elu_plus_one, dict(x=_r(B, n)), ("y",), ("x",)),
        Pair("gru_cell_backward", recurrent.gru_cell,
             dict(x=_r(B, 3), h=_r(B, 2), W=_r(3, 6), U=_r(2, 6), b=_r(6)), ("h_new", "cache"),
             ("x", "h", "W", "U", "b")),
        Pair("lstm_cell_backward", recurrent.lstm_cell,
             dict(x=_r(B, 3), h=_r(B, 2), c=_r(B, 2), W=_r(3, 8), U=_r(2, 8), b=_r(8)),
             ("h_new", "c_new", "cache"), ("x", "h", "c", "W", "U", "b"), upstream=(0, 1)),
        Pair("visual_sentinel_backward", adaptive.visual_sentinel,
             dict(x_t=_r(B, 3), h_prev=_r(B, d), m_t=_r(B, d), W_x=_r(3, d), W_h=_r(d, d)), ("s", "g"),
             ("x_t", "h_prev", "m_t", "W_x", "W_h")),
        Pair("adaptive_attention_backward", adaptive.adaptive_attention,
             dict(regions=_r(B, 3, d), h_t=_r(B, d), sentinel=_r(B, d),
                  params=dict(W_v=_r(d, 5), W_g=_r(d, 5), W_s=_r(d, 5), w_h=_r(5)), mask=None),
             ("c_hat", "weights"), ("regions", "h_t", "sentinel", "params")),
        Pair("additive_attention_backward", additive.additive_attention,
             dict(query=_r(B, n, 3), keys=_r(B, m, d), values=_r(B, m, 5), W_q=_r(3, 6), W_k=_r(d, 6), w=_r(6),
                  mask=None, return_hidden=True),
             ("out", "weights", "hidden"), ("query", "keys", "values", "W_q", "W_k", "w")),
        Pair("additive_scores_backward", soft.additive_scores,
             dict(features=_r(B, m, d), state=_r(B, 3), W_a=_r(d, 5), W_h=_r(3, 5), b=_r(5), w=_r(5)),
             ("scores", "T"), ("features", "state", "W_a", "W_h", "b", "w")),
        Pair("soft_attention_backward", soft.soft_attention,
             dict(features=_r(B, m, d), state=_r(B, 3),
                  params=dict(W_a=_r(d, 5), W_h=_r(3, 5), b=_r(5), w=_r(5), w_beta=_r(3), b_beta=_r(1)),
                  mask=None),
             ("context", "weights", "beta"), ("features", "state", "params")),
        Pair("cross_attention_backward", cross.cross_attention,
             dict(x=_r(B, n, d), context=_r(B, m, 3), W_q=_r(d, 2), W_k=_r(3, 2), W_v=_r(3, 5), mask=None),
             ("out", "weights"), ("x", "context", "W_q", "W_k", "W_v")),
        Pair("self_attention_backward", sa.self_attention,
             dict(x=_r(B, n, d), W_q=_r(d, 2), W_k=_r(d, 2), W_v=_r(d, 5), mask=None),
             ("out", "weights"), ("x", "W_q", "W_k", "W_v")),
        Pair("flash_attention_backward", flash.flash_attention, dict(**qkv(), causal=False, block_size=2),
             ("out", "lse"), ("q", "k", "v")),
        Pair("linear_attention_backward", lin.linear_attention, dict(**qkv(), causal=False),
             ("out",), ("q", "k", "v")),
        Pair("scaled_dot_product_attention_backward", sdp.scaled_dot_product_attention,
             dict(**qkv(), mask=None), ("out", "weights"), ("q", "k", "v")),
        Pair("dot_product_attention_backward", sdp.dot_product_attention,
             dict(**qkv(), mask=None, scale=0.3), ("out", "weights"), ("q", "k", "v")),
        Pair("sparsemax_attention_backward", sparse.sparsemax_attention,
             dict(**qkv(), mask=None), ("out", "weights"), ("q", "k", "v")),
        Pair("sliding_window_attention_backward", sparse.sliding_window_attention,
             dict(q=_r(B, m, d), k=_r(B, m, d), v=_r(B, m, 5), window=1, causal=False),
             ("out", "weights"), ("q", "k", "v")),
        Pair("sparsemax_backward", sparse.sparsemax, dict(z=_r(B, 5), axis=-1), ("p",), ("z",)),
        Pair("relative_attention_backward", positional.relative_attention,
             dict(**qkv(), table_k=_r(5, d), table_v=_r(5, 5), mask=None), ("out", "weights"),
             ("q", "k", "v", "table_k", "table_v")),
        Pair("rope_backward", positional.rope,
             dict(x=_r(B, n, d), positions=np.array([3, 1, 4]), base=100.0, interleaved=False), ("y",), ("x",)),
        Pair("split_heads_backward", multihead.split_heads, dict(x=_r(B, n, 6), n_heads=2), ("y",), ("x",)),
        Pair("merge_heads_backward", multihead.merge_heads, dict(x=_r(B, 2, n, 3)), ("y",), ("x",),
             extra=dict(n_heads=2)),
        Pair("repeat_kv_backward", multihead.repeat_kv, dict(x=_r(B, 2, n, 3), n_rep=3), ("y",), ("x",)),
        Pair("attention_pooling_backward", pooling.attention_pooling,
             dict(scores=_r(B, n, m), values=_r(B, m, 5), mask=None), ("out", "weights"), ("scores", "values")),
        Pair("nadaraya_watson_backward", pooling.nadaraya_watson,
             dict(queries=_r(B, n), keys=_r(B, m), values=_r(B, m), kernel="gaussian", bandwidth=0.8),
             ("out", "weights"), ("queries", "keys", "values", "bandwidth")),
        Pair("gumbel_softmax_backward", hard.gumbel_softmax,
             dict(logits=_r(B, 5), tau=0.7, rng=None), ("y", "y_soft"), ("logits",),
             run=lambda a: hard.gumbel_softmax(a["logits"], a["tau"], np.random.default_rng(3))),
        Pair("context_pooling_backward", hierarchical.context_pooling,
             dict(H=_r(B, m, d), W=_r(d, 5), b=_r(5), u=_r(5), mask=None), ("pooled", "weights", "U"),
             ("H", "W", "b", "u")),
        Pair("temporal_attention_backward", temporal.temporal_attention,
             dict(frames=_r(B, m, d), h_prev=_r(B, 3), W_a=_r(3, 5), U_a=_r(d, 5), b_a=_r(5), w=_r(5), mask=None),
             ("phi", "weights", "T"), ("frames", "h_prev", "W_a", "U_a", "b_a", "w")),
        Pair("attentional_hidden_backward", global_attention.attentional_hidden,
             dict(context=_r(B, d), h_t=_r(B, d), W_c=_r(2 * d, d) / 2), ("h_tilde",), ("context", "h_t", "W_c")),
        Pair("output_backward", attend_and_combine,
             dict(weights=np.abs(_r(B, m)), source=_r(B, m, d), h_t=_r(B, d), W_c=_r(2 * d, d) / 2),
             ("context", "h_tilde"), ("weights", "source", "h_t", "W_c"), upstream=(1,)),
        Pair("local_weights_backward", local.local_weights,
             dict(scores=_r(B, 6), p_t=np.array([2.3, 3.4]), window=2, mask=None, gaussian=True),
             ("weights", "align", "gauss"), ("scores", "p_t")),
    ]
    for method, W_a, v_a, grads in [("dot", None, None, ("h_t", "source")),
                                    ("general", _r(d, d), None, ("h_t", "source", "W_a")),
                                    ("concat", _r(2 * d, 5), _r(5), ("h_t", "source", "W_a", "v_a"))]:
        pairs.append(Pair("luong_scores_backward", global_attention.luong_scores,
                          dict(h_t=_r(B, d), source=_r(B, m, d), method=method, W_a=W_a, v_a=v_a),
                          ("scores", "cache"), grads))
    return pairs


_PAIRS = _pairs()


def _pair_id(pair):
    method = pair.inputs.get("method")
    return pair.backward + (f"[{method}]" if method else "")


def _is_array(value):
    return isinstance(value, (np.ndarray, dict))


def test_every_public_backward_is_walked():
    walked = {pair.backward for pair in _PAIRS} | _LOSS_BACKWARDS
    missing = set(_public_backwards()) - walked
    assert not missing, f"public backward functions without a contract case: {sorted(missing)}"


@pytest.mark.parametrize("pair", _PAIRS, ids=_pair_id)
def test_backward_arguments_follow_the_forward(pair):
    """dout first, then the forward's array arguments in its order, then what the forward returned."""
    backward = _public_backwards()[pair.backward]
    names = list(inspect.signature(backward).parameters)
    ups, rest = names[:len(pair.upstream)], names[len(pair.upstream):]
    assert all(name.startswith("d") for name in ups), f"{pair.backward}{inspect.signature(backward)}: " \
        f"the first argument(s) must be the upstream gradient(s) d..."
    forward_order = list(inspect.signature(pair.forward).parameters)
    arrays = [name for name in rest if name in pair.inputs and _is_array(pair.inputs[name])]
    assert arrays == sorted(arrays, key=forward_order.index), \
        f"{pair.backward}{inspect.signature(backward)}: forward arguments out of the forward's order {forward_order}"
    returned = [name for name in rest if name in pair.results]
    assert returned == sorted(returned, key=pair.results.index), \
        f"{pair.backward}: the forward's results out of the order it returns them {pair.results}"
    if returned and arrays:
        assert max(map(rest.index, arrays)) < min(map(rest.index, returned)), \
            f"{pair.backward}{inspect.signature(backward)}: what the forward returned comes after its arguments"
    params = inspect.signature(backward).parameters
    for name in rest:
        known = name in pair.inputs or name in pair.results or name in pair.extra
        assert known or params[name].default is not inspect.Parameter.empty, \
            f"{pair.backward}: argument {name!r} is neither a forward argument nor a forward result"


def _loss(pair, inputs, G):
    outs = pair.call(inputs)
    return sum(float(np.sum(np.asarray(outs[i]) * g)) for i, g in zip(pair.upstream, G))


def _shift(value, direction, eps):
    if isinstance(value, dict):
        return {key: value[key] + eps * direction[key] for key in value}
    return value + eps * direction


def _dot(grad, direction):
    if isinstance(grad, dict):
        return sum(float(np.sum(grad[key] * direction[key])) for key in grad)
    return float(np.sum(np.asarray(grad) * direction))


@pytest.mark.parametrize("pair", _PAIRS, ids=_pair_id)
def test_backward_returns_flat_gradients_in_argument_order(pair):
    """One gradient per differentiable argument, in order; a dict only for a params dict; checked numerically."""
    backward = _public_backwards()[pair.backward]
    outs = pair.call(pair.inputs)
    rng = np.random.default_rng(11)
    G = [rng.standard_normal(np.shape(outs[i])) for i in pair.upstream]
    names = list(inspect.signature(backward).parameters)
    kwargs = dict(zip(names, G))
    for name in names[len(G):]:
        if name in pair.inputs:
            kwargs[name] = pair.inputs[name]
        elif name in pair.results:
            kwargs[name] = outs[pair.results.index(name)]
        elif name in pair.extra:
            kwargs[name] = pair.extra[name]
    got = backward(**kwargs)
    if len(pair.grads) == 1:
        assert isinstance(got, np.ndarray), f"{pair.backward} has one gradient: return it as an array, got {type(got)}"
        got = (got,)
    assert isinstance(got, tuple) and len(got) == len(pair.grads), \
        f"{pair.backward} must return a flat tuple of {len(pair.grads)} gradients {pair.grads}"
    for name, grad in zip(pair.grads, got):
        value = pair.inputs[name]
        if isinstance(value, dict):
            assert name == "params" and isinstance(grad, dict) and set(grad) == set(value), \
                f"{pair.backward}: the gradient of a params dict is one dict with the same keys"
            assert all(np.shape(grad[key]) == np.shape(value[key]) for key in value)
            direction = {key: rng.standard_normal(np.shape(value[key])) for key in value}
        else:
            assert not isinstance(grad, dict), f"{pair.backward}: no dict unless a params dict was passed"
            assert np.shape(grad) == np.shape(value), \
                f"{pair.backward}: d{name} has shape {np.shape(grad)}, {name} has {np.shape(value)}"
            direction = rng.standard_normal(np.shape(value)) if np.ndim(value) else 1.0
        eps = 1e-6
        numeric = (_loss(pair, {**pair.inputs, name: _shift(value, direction, eps)}, G)
                   - _loss(pair, {**pair.inputs, name: _shift(value, direction, -eps)}, G)) / (2 * eps)
        analytic = _dot(grad, direction)
        assert abs(analytic - numeric) < TOLERANCE * max(1.0, abs(analytic), abs(numeric)), \
            f"{pair.backward}: d{name} does not match finite differences ({analytic} vs {numeric})"


def test_loss_backwards_start_the_chain_with_dloss():
    from attention_np import cross_entropy_backward
    from attention_np.nn.losses import mse_backward
    for fn in (cross_entropy_backward, mse_backward):
        parameter = inspect.signature(fn).parameters["dloss"]
        assert parameter.default == 1.0
    logits = np.random.default_rng(0).standard_normal((2, 3))
    np.testing.assert_allclose(cross_entropy_backward(logits, np.array([0, 2]), dloss=2.0),
                               2.0 * cross_entropy_backward(logits, np.array([0, 2])))


# ---------------------------------------------------------------- Module backward returns
@dataclasses.dataclass
class ModuleCase:
    make: Callable
    args: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)
    backward_kwargs: dict = dataclasses.field(default_factory=dict)
    label: str = ""


def _module_cases():
    from attention_np import mechanisms as M, nn
    rng = lambda: np.random.default_rng(0)   # noqa: E731
    B, n, m, d = 2, 3, 4, 4
    ids = np.array([[1, 2, 3], [3, 0, 1]])
    pad = np.array([[True, True, True, False], [True, True, False, False]])
    return [
        ModuleCase(lambda: nn.Linear(d, 3, rng=rng()), (_r(B, n, d),)),
        ModuleCase(lambda: nn.LayerNorm(d), (_r(B, n, d),)),
        ModuleCase(lambda: nn.Embedding(5, d, rng=rng()), (ids,)),
        ModuleCase(lambda: nn.Dropout(0.0), (_r(B, n, d),)),
        ModuleCase(lambda: nn.GRUCell(3, 2, rng=rng()), (_r(B, 3),), label="no h"),
        ModuleCase(lambda: nn.GRUCell(3, 2, rng=rng()), (_r(B, 3), _r(B, 2)), label="h"),
        ModuleCase(lambda: nn.LSTMCell(3, 2, rng=rng()), (_r(B, 3),), label="no state"),
        ModuleCase(lambda: nn.LSTMCell(3, 2, rng=rng()), (_r(B, 3), _r(B, 2)), label="h"),
        ModuleCase(lambda: nn.LSTMCell(3, 2, rng=rng()), (_r(B, 3),), dict(c=_r(B, 2)), label="c"),
        ModuleCase(lambda: nn.LSTMCell(3, 2, rng=rng()), (_r(B, 3), _r(B, 2), _r(B, 2)), label="h c"),
        ModuleCase(lambda: nn.GRU(3, 2, rng=rng()), (_r(B, m, 3),), dict(mask=pad), label="mask"),
        ModuleCase(lambda: nn.GRU(3, 2, bidirectional=True, rng=rng()), (_r(B, m, 3), _r(B, 4)), label="h0"),
        ModuleCase(lambda: nn.LSTM(3, 2, rng=rng()), (_r(B, m, 3),), dict(c0=_r(B, 2)), label="c0"),
        ModuleCase(lambda: nn.LSTM(3, 2, rng=rng()), (_r(B, m, 3), _r(B, 2), _r(B, 2)), label="h0 c0"),
        ModuleCase(lambda: M.NadarayaWatson(rng=rng()), (_r(B, n), _r(B, m), _r(B, m))),
        ModuleCase(lambda: M.AdditiveAttention(3, d, 5, rng=rng()), (_r(B, n, 3), _r(B, m, d), _r(B, m, 2)),
                   dict(mask=pad[:, None])),
        ModuleCase(lambda: M.SoftAttention(d, 3, 5, rng=rng()), (_r(B, m, d), _r(B, 3)), dict(mask=pad)),
        ModuleCase(lambda: M.HardAttention(d, 3, 5, rng=rng()), (_r(B, m, d), _r(B, 3), rng()),
                   backward_kwargs=dict(advantage=np.array([0.5, -1.0]))),
        ModuleCase(lambda: M.GlobalAttention(d, "concat", rng=rng()), (_r(B, d), _r(B, m, d)), dict(mask=pad)),
        ModuleCase(lambda: M.LocalAttention(d, 1, rng=rng()), (_r(B, d), _r(B, m, d)), label="predictive"),
        ModuleCase(lambda: M.LocalAttention(d, 1, mode="monotonic", rng=rng()), (_r(B, d), _r(B, m, d)),
                   dict(t=2), label="monotonic"),
        ModuleCase(lambda: M.SelfAttention(d, 3, rng=rng()), (_r(B, n, d),)),
        ModuleCase(lambda: M.RelativeSelfAttention(d, 3, 2, rng=rng()), (_r(B, n, d),)),
        ModuleCase(lambda: M.CrossAttention(d, 3, 2, rng=rng()), (_r(B, n, d), _r(B, m, 3))),
        ModuleCase(lambda: M.MultiHeadAttention(d, 2, rng=rng()), (_r(B, n, d),), label="self"),
        ModuleCase(lambda: M.MultiHeadAttention(d, 2, rng=rng()), (_r(B, n, d), _r(B, m, d)), label="cross"),
        ModuleCase(lambda: M.MultiHeadLatentAttention(d, 2, 2, 3, 3, 2, rng=rng()), (_r(B, n, d),)),
        ModuleCase(lambda: M.AdaptiveAttention(d, 5, rng=rng()), (_r(B, m, d), _r(B, d), _r(B, d))),
        ModuleCase(lambda: M.VisualSentinel(3, d, rng=rng()), (_r(B, 3), _r(B, d), _r(B, d))),
        ModuleCase(lambda: M.AttentionPooling(d, 5, rng=rng()), (_r(B, m, d),), dict(mask=pad)),
        ModuleCase(lambda: M.HierarchicalAttention(6, 3, 2, 2, rng=rng()), (np.ones((B, 2, 3), int),)),
        ModuleCase(lambda: M.TemporalAttention(d, 3, 5, rng=rng()), (_r(B, m, d), _r(B, 3)), dict(mask=pad)),
        ModuleCase(lambda: M.MemoryNetwork(6, d, 2, 3, 2, rng=rng()), (np.ones((B, 3, 2), int), np.ones((B, 2), int))),
        ModuleCase(lambda: M.LinformerAttention(d, n, 2, rng=rng()), (_r(B, n, d),)),
        ModuleCase(lambda: M.FeedForward(d, 5, rng=rng()), (_r(B, n, d),)),
        ModuleCase(lambda: M.TransformerBlock(d, 2, 5, rng=rng()), (_r(B, n, d),)),
        ModuleCase(lambda: M.TinyTransformer(5, d, 2, 1, 5, 4, rng=rng()), (ids,)),
    ]


_MODULE_CASES = _module_cases()


def _case_id(case):
    return case.make().__class__.__name__ + (f"[{case.label}]" if case.label else "")


def test_every_public_module_is_walked():
    walked = {type(case.make()).__name__ for case in _MODULE_CASES}
    missing = set(_public_module_classes()) - walked
    assert not missing, f"public Modules without a contract case: {sorted(missing)}"


@pytest.mark.parametrize("case", _MODULE_CASES, ids=_case_id)
def test_module_backward_returns_one_gradient_per_float_array_passed(case):
    """None for integer ids only, one array for one float input, a tuple (in argument order) for several."""
    layer = case.make()
    backward_names = list(inspect.signature(layer.backward).parameters)
    assert backward_names[0].startswith("d"), f"{type(layer).__name__}.backward must start with the upstream gradient"
    out = layer(*case.args, **case.kwargs)
    got = layer.backward(np.ones_like(out), **case.backward_kwargs)
    order = list(inspect.signature(layer.forward).parameters)
    passed = list(zip(order, case.args)) + sorted(case.kwargs.items(), key=lambda kv: order.index(kv[0]))
    floats = [(name, value) for name, value in passed
              if isinstance(value, np.ndarray) and value.dtype.kind == "f"]
    if not floats:
        assert got is None, f"{type(layer).__name__}: integer inputs have no gradient, return None"
    elif len(floats) == 1:
        assert isinstance(got, np.ndarray) and got.shape == floats[0][1].shape
    else:
        assert isinstance(got, tuple) and len(got) == len(floats), \
            f"{type(layer).__name__}: one gradient per float array passed ({[n for n, _ in floats]}), got {got!r:.80}"
        for (name, value), grad in zip(floats, got):
            assert isinstance(grad, np.ndarray) and grad.shape == value.shape, f"d{name}"


# ---------------------------------------------------------------- input ranks of attention Modules
def _rank_cases():
    from attention_np import mechanisms as M
    rng = lambda: np.random.default_rng(1)   # noqa: E731
    d = 4
    return {
        "SelfAttention": (lambda: M.SelfAttention(d, 3, rng=rng()), ()),
        "MultiHeadAttention": (lambda: M.MultiHeadAttention(d, 2, n_kv_heads=1, rope=True, rng=rng()), ()),
        "MultiHeadAttention[cross]": (lambda: M.MultiHeadAttention(d, 2, rng=rng()), ((5, d),)),
        "MultiHeadLatentAttention": (lambda: M.MultiHeadLatentAttention(d, 2, 2, 3, 3, 2, rng=rng()), ()),
        "CrossAttention": (lambda: M.CrossAttention(d, 3, 2, rng=rng()), ((5, 3),)),
        "RelativeSelfAttention": (lambda: M.RelativeSelfAttention(d, 3, 1, rng=rng()), ()),
        "LinformerAttention": (lambda: M.LinformerAttention(d, 3, 2, n_heads=2, rng=rng()), ()),
        "TransformerBlock": (lambda: M.TransformerBlock(d, 2, 5, causal=True, rng=rng()), ()),
        "AdditiveAttention": (lambda: M.AdditiveAttention(d, 3, 5, rng=rng()), ((5, 3), (5, 2))),
        "FeedForward": (lambda: M.FeedForward(d, 5, rng=rng()), ()),
    }


_RANK_CASES = _rank_cases()


def test_every_sequence_module_is_rank_checked():
    """Modules whose forward reads a sequence x (n, d) / query must take it with and without a batch axis."""
    covered = {name.split("[")[0] for name in _RANK_CASES}
    sequence = {name for name, cls in _public_module_classes().items()
                if cls.__module__.startswith("attention_np.mechanisms")
                and list(inspect.signature(cls.forward).parameters)[1] in ("x", "query")}
    assert sequence - covered == set(), f"not rank-checked: {sorted(sequence - covered)}"


@pytest.mark.parametrize("name", sorted(_RANK_CASES))
def test_attention_modules_take_an_unbatched_sequence(name):
    """(n, d) in gives (n, d_out) out and (n, d) gradients; the same numbers as the batch of one."""
    make, others = _RANK_CASES[name]
    layer = make()
    x = np.random.default_rng(2).standard_normal((3, layer.d_model if hasattr(layer, "d_model") else 4))
    extra = [np.random.default_rng(3 + i).standard_normal(shape) for i, shape in enumerate(others)]
    out2 = layer(x, *extra)
    weights2 = getattr(layer, "weights", None)
    dout = np.random.default_rng(9).standard_normal(out2.shape)
    grads2 = layer.backward(dout)
    out3 = layer(x[None], *(e[None] for e in extra))
    weights3 = getattr(layer, "weights", None)
    grads3 = layer.backward(dout[None])
    assert out2.ndim == 2 and out3.shape == (1,) + out2.shape
    np.testing.assert_allclose(out2, out3[0], rtol=0, atol=1e-13)
    grads2 = grads2 if isinstance(grads2, tuple) else (grads2,)
    grads3 = grads3 if isinstance(grads3, tuple) else (grads3,)
    for g2, g3, a in zip(grads2, grads3, [x] + extra):
        assert g2.shape == a.shape
        np.testing.assert_allclose(g2, g3[0], rtol=0, atol=1e-13)
    if weights3 is not None:                                  # .weights has no batch axis either
        np.testing.assert_allclose(weights2, weights3[0], rtol=0, atol=1e-13)
    errors = check_module(make(), x, *extra, details=True)
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("make", [
    lambda: __import__("attention_np").mechanisms.CrossAttention(4, 3, 2, rng=np.random.default_rng(4)),
    lambda: __import__("attention_np").mechanisms.MultiHeadAttention(3, 1, rng=np.random.default_rng(4)),
], ids=["CrossAttention", "MultiHeadAttention"])
def test_a_batch_one_context_is_shared_by_every_example(make):
    """context (1, m, d) against x (B, n, d) broadcasts like SDPA; its gradient is summed back to (1, m, d)."""
    layer = make()
    d_x = layer.d_model
    d_c = getattr(layer, "d_context", d_x)
    rng = np.random.default_rng(5)
    x, context = rng.standard_normal((3, 2, d_x)), rng.standard_normal((1, 4, d_c))
    out = layer(x, context)
    tiled = layer(x, np.repeat(context, 3, axis=0))
    np.testing.assert_allclose(out, tiled, rtol=0, atol=1e-13)
    layer(x, context)
    dx, dcontext = layer.backward(np.ones_like(out))
    assert dx.shape == x.shape and dcontext.shape == (1, 4, d_c)
    errors = check_module(make(), x, context, details=True)
    assert max(errors.values()) < TOLERANCE, errors


def test_unbatched_input_keeps_the_weights_unbatched_and_refuses_mixed_ranks():
    from attention_np.mechanisms import CrossAttention, MultiHeadAttention
    mha = MultiHeadAttention(4, 2, rng=np.random.default_rng(0))
    mha(np.zeros((3, 4)))
    assert mha.weights.shape == (2, 3, 3)                     # (H, n, m): no batch axis in, none out
    with pytest.raises(ValueError, match="context must have shape"):
        mha(np.zeros((3, 4)), np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match="context must have shape"):
        CrossAttention(4, 3, 2, rng=np.random.default_rng(0))(np.zeros((2, 3, 4)), np.zeros((2, 5, 3))[:, :, :2])


# ---------------------------------------------------------------- caches and names
def test_mla_decodes_with_a_mutable_cache_like_mha():
    from attention_np.mechanisms import KVCache, MultiHeadLatentAttention
    from attention_np.mechanisms.latent import LatentCache
    for cls in (KVCache, LatentCache):
        for member in ("append", "length", "reset", "nbytes", "max_len"):
            assert hasattr(cls(), member), f"{cls.__name__} has no {member}"
    mla = MultiHeadLatentAttention(6, 2, 3, 4, 5, 2, rng=np.random.default_rng(0))
    cache = mla.init_cache(max_len=5)
    assert isinstance(cache, LatentCache) and cache.length == 0
    x = np.random.default_rng(1).standard_normal((2, 5, 6))
    out = mla.forward_incremental(x[:, :3], cache)               # prefill
    assert isinstance(out, np.ndarray) and cache.length == 3
    out2 = mla.forward_incremental(x[:, 3:], cache)
    assert cache.length == 5 and cache.c_kv.shape == (2, 5, 4) and cache.k_r.shape == (2, 5, 2)
    np.testing.assert_allclose(np.concatenate([out, out2], axis=1), mla(x, causal=True), rtol=0, atol=1e-12)


def test_additive_score_vector_is_w_not_v():
    from attention_np.mechanisms import AdditiveAttention
    from attention_np.mechanisms.additive import additive_attention, additive_attention_backward, additive_scores
    assert set(AdditiveAttention(2, 2, 3, rng=np.random.default_rng(0)).params) == {"W_q", "W_k", "w"}
    for fn in (additive_scores, additive_attention, additive_attention_backward):
        names = inspect.signature(fn).parameters
        assert "w" in names and "v" not in names, f"{fn.__name__}: the score vector is w (v means values)"
    for name, cls in _public_module_classes().items():
        layer = next(case.make() for case in _MODULE_CASES if type(case.make()) is cls)
        assert "v" not in layer.params, f"{name}.params['v']: v means the values; name a score vector w"


def test_constructors_take_sizes_then_options_then_rng_as_a_keyword():
    """``rng`` is the last constructor argument and keyword-only: a positional call cannot shift it into an option."""
    for name, cls in _public_module_classes().items():
        parameters = list(inspect.signature(cls.__init__).parameters.values())
        if not any(p.name == "rng" for p in parameters):
            continue
        last = parameters[-1]
        assert last.name == "rng" and last.kind is inspect.Parameter.KEYWORD_ONLY and last.default is None, \
            f"{name}{inspect.signature(cls.__init__)}: rng must come last, as a keyword (rng=None)"
    with pytest.raises(TypeError):
        Linear(4, 3, True, np.random.default_rng(0))                     # a positional rng is refused
