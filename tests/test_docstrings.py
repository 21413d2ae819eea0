"""``help()`` is the reader's documentation (issue 15, item 10).

Walks every public class (``attention_np.__all__``, ``attention_np.mechanisms.__all__``
and every ``Module`` subclass in ``attention_np.nn``) and every public function
of ``attention_np.nn`` and ``attention_np.mechanisms`` and checks that

* each public method (``forward``, ``backward`` and every other name not
  starting with ``_``, properties included) and each public function has a
  docstring;
* the docstring of every function or method that takes arrays names a shape:
  a parenthesised shape such as ``(..., n, d_k)``, ``(B, n, d_model)``,
  ``(d_a,)`` or ``(...)`` ("any shape");
* no docstring sends the reader to a working document (MECHANISMS.md,
  DESIGN.md) instead of a paper or a chapter.

``Module`` wraps ``forward``/``backward`` of every subclass with
``functools.wraps``, so the docstrings checked here are the ones ``help()`` shows.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import attention_np
import attention_np.mechanisms as mechanisms
import attention_np.nn as nn
from attention_np.nn.module import Module

# Modules left out while another change is in progress; the lead empties this list
# once they are finished (memory.py is being completed in parallel with this test).
SKIP_MODULES = set()

# Parameter names that never hold an array (sizes, switches, scalars, generators,
# names).  A function or method with any other parameter "takes arrays" and its
# docstring must name a shape.  Keep this list short and obvious.
NON_ARRAY_PARAMETERS = {
    "self", "cls", "args", "kwargs",
    # sizes and counts
    "n", "m", "d", "d_in", "d_out", "d_embed", "n_heads", "n_kv_heads", "n_layers", "d_head", "n_tokens",
    "n_rep", "n_new", "n_random", "batch_size", "bytes_per_element", "max_distance", "sentence_len",
    "size", "ndim", "high", "block_size", "window", "stride", "block", "c", "d_att",
    # scalars and switches
    "axis", "keepdims", "scale", "tau", "base", "interleaved", "causal", "hard", "alpha", "lam", "dloss",
    "entropy", "kernel", "bandwidth", "mode", "at_least", "gaussian", "return_hidden", "ignore_index",
    "dtype", "prefix",
    # generators, names, messages and other non-array objects
    "rng", "name", "expected", "value", "owner", "arguments", "annotations", "module", "method",
    "init", "is_forward",
}


def _is_shape(inner: str) -> bool:
    """True for the inside of ``(...)``, ``(n, m)``, ``(d_a,)``, ``(B=3, k+1)``, ``(H*d_head, d_model)``."""
    inner = inner.strip()
    if inner in ("...", "…"):
        return True
    if "," not in inner:
        return False
    token = re.compile(r"(\.\.\.|…|[\w']+(\s*[-+*/=]\s*[\w']+)*|[\w']+=[\w']+)")
    parts = [p.strip() for p in inner.split(",")]
    if parts[-1] == "":
        parts = parts[:-1]
    return bool(parts) and all(token.fullmatch(p) for p in parts)


def mentions_shape(doc: str) -> bool:
    return any(_is_shape(inner) for inner in re.findall(r"\(([^()]*)\)", doc))


def _modules(package):
    for info in pkgutil.iter_modules(package.__path__):
        name = f"{package.__name__}.{info.name}"
        if name not in SKIP_MODULES:
            yield importlib.import_module(name)


def public_classes() -> dict[str, type]:
    classes = {}
    for package in (attention_np, mechanisms):
        for name in package.__all__:
            obj = getattr(package, name)
            if inspect.isclass(obj):
                classes[f"{obj.__module__}.{obj.__qualname__}"] = obj
    for module in _modules(nn):
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Module) and obj.__module__ == module.__name__
                    and not name.startswith("_")):
                classes[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return {k: v for k, v in classes.items() if v.__module__ not in SKIP_MODULES}


def public_functions() -> dict[str, object]:
    functions = {}
    for package in (attention_np, mechanisms, nn):
        for name in package.__all__:
            obj = getattr(package, name)
            if inspect.isfunction(obj):
                functions[f"{obj.__module__}.{obj.__qualname__}"] = obj
    for package in (nn, mechanisms):
        for module in _modules(package):
            for name, obj in vars(module).items():
                if inspect.isfunction(obj) and obj.__module__ == module.__name__ and not name.startswith("_"):
                    functions[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return {k: v for k, v in functions.items() if v.__module__ not in SKIP_MODULES}


def public_methods() -> dict[str, object]:
    """Every public method and property of the public classes, where the library defines it."""
    methods = {}
    for cls in public_classes().values():
        for name in dir(cls):
            if name.startswith("_"):
                continue
            owner = next(c for c in cls.__mro__ if name in vars(c))
            if not owner.__module__.startswith("attention_np"):
                continue
            attr = vars(owner)[name]
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            elif isinstance(attr, property):
                attr = attr.fget
            if inspect.isfunction(attr):
                methods[f"{owner.__module__}.{owner.__qualname__}.{name}"] = attr
    return methods


def takes_arrays(fn) -> bool:
    return any(p not in NON_ARRAY_PARAMETERS for p in inspect.signature(fn).parameters)


CALLABLES = {**public_functions(), **public_methods()}


def test_the_walk_finds_what_it_should():
    names = set(CALLABLES)
    for expected in ("attention_np.nn.functional.softmax_backward", "attention_np.mechanisms.sparse.sparsemax",
                     "attention_np.nn.functional.log_softmax", "attention_np.mechanisms.positional.rope_backward",
                     "attention_np.nn.linear.Linear.forward", "attention_np.nn.recurrent.GRU.backward",
                     "attention_np.mechanisms.multihead.MultiHeadAttention.forward",
                     "attention_np.mechanisms.kv_cache.KVCache.append", "attention_np.nn.module.Module.zero_grad"):
        assert expected in names
    assert len(public_classes()) >= 30 and len(CALLABLES) >= 150


def test_skipped_modules_exist():
    for module in SKIP_MODULES:              # a stale entry would silently hide nothing
        importlib.import_module(module)
    assert not SKIP_MODULES, "every public module is documented: keep this set empty"


def test_every_public_method_and_function_has_a_docstring():
    missing = sorted(name for name, fn in CALLABLES.items() if not inspect.getdoc(fn))
    assert not missing, f"{len(missing)} public functions/methods without a docstring: {missing}"


def test_docstrings_of_functions_taking_arrays_name_their_shapes():
    missing = sorted(name for name, fn in CALLABLES.items()
                     if takes_arrays(fn) and not mentions_shape(inspect.getdoc(fn) or ""))
    assert not missing, f"{len(missing)} docstrings without a shape such as (B, n, d_model): {missing}"


def test_forward_and_backward_docstrings_name_their_shapes():
    names = [n for n in CALLABLES if n.rsplit(".", 1)[-1] in ("forward", "backward")]
    assert len(names) >= 40
    missing = sorted(n for n in names if not mentions_shape(inspect.getdoc(CALLABLES[n]) or ""))
    assert not missing, f"forward/backward without shapes: {missing}"


def test_docstrings_cite_papers_and_chapters_not_working_documents():
    objects = {**CALLABLES, **public_classes()}
    for package in (nn, mechanisms):
        for module in _modules(package):
            objects[module.__name__] = module
    bad = sorted(name for name, obj in objects.items()
                 if re.search(r"MECHANISMS\.md|DESIGN\.md", inspect.getdoc(obj) or ""))
    assert not bad, f"docstrings citing a working document: {bad}"


@pytest.mark.parametrize("doc, ok", [
    ("x (B, n, d_model)", True), ("(..., n, d_k)", True), ("v (d_a,)", True), ("any shape (...)", True),
    ("(B=3, k+1)", True), ("(H*d_head, d_model)", True), ("(2*max_distance+1, d_k)", True),
    ("(the paper, section 4)", False), ("(see above)", False), ("x (n)", False),
])
def test_shape_pattern(doc, ok):
    assert mentions_shape(doc) is ok
