"""The off-limits guard: while a submission is graded, an answer cannot call the reference it is asked to write.

Each check cell names, in its ``grade`` metadata, the library objects its exercise asks the student
to write (``"off_limits": ["attention_np.mechanisms.sparse.sparsemax", ...]``).  The graded notebook
(see :func:`attention_np.grading.notebook.add_guard`) gets three hidden lines:

* before the first code cell runs, :func:`install` replaces every off-limits function, wherever an
  ``attention_np`` module holds it (its own module, re-exports such as ``attention_np.X`` or
  ``attention_np.mechanisms.X``), by a proxy; for an off-limits class, each method defined on the
  class is wrapped in place.  So ``import``, ``from ... import X as Y``, ``importlib``, ``getattr``
  and ``sys.modules`` all reach the proxy;
* each check cell starts with :func:`enter_check` and ends with :func:`leave_check`.

A proxy looks at who called it: the nearest notebook cell on the call stack decides (library code,
numpy, functools and ``exec``'d strings in between are transparent).  A solution cell of exercise E
(ipykernel names a cell's code file after a hash of its source, so the grader knows the solution
cells' file names) makes the call a violation when the object is off limits for E; a locked or
check cell makes it legitimate (so the check's reference works, and other exercises may use the
object as a building block).  Library building blocks that are not listed stay usable; a listed
object is off limits however the answer reaches it, also through a library function that calls it.
A violation is recorded for E and raises :class:`OffLimitsError`; catching it does not help, because
``enter_check``/``leave_check`` fail E with the recorded reason.

``reference(name)`` (what check cells use) returns the original object from a snapshot taken at
install time, so a solution cell that rebinds ``attention_np.X`` cannot change what the check
compares against; called with a student frame on the stack it refuses.

``enter_check``/``leave_check`` also detect tampering with what checks rely on: the grading
helpers, ``numpy``'s functions and ``builtins`` are compared by identity with their values at
install time; a notebook global that hides a built-in the check reads, or that replaces a value
a locked cell set and the check reads (IPython's ``pre_run_cell``/``post_run_cell`` events record
which cell last set each global), fails the check too.

Limits (stated in the README): this is an in-process guard.  It stops the ordinary routes, but a
student who deliberately digs out the original through interpreter internals (``gc``, closures,
``ctypes``, code compiled under a forged file name) can defeat it; :func:`static_warnings` flags
such text in an answer so an instructor can look.
"""
from __future__ import annotations

import builtins
import importlib
import inspect
import os
import re
import sys

__all__ = ["OffLimitsError", "TamperingError", "install", "installed", "enter_check", "leave_check",
           "reference", "static_warnings", "cell_file_name"]


class OffLimitsError(RuntimeError):
    """An answer called a library object that its exercise asks the student to write."""


class TamperingError(RuntimeError):
    """A solution cell replaced something the checks rely on."""


_STATE = None   # set by install()
_HASH_SEED = 0xC70F6907   # ipykernel.compiler.get_tmp_hash_seed()


def cell_file_name(source: str) -> str:
    """The base name of the code file ipykernel gives a cell with this source (``<murmur2 hash>.py``)."""
    try:
        from ipykernel.compiler import get_tmp_hash_seed, murmur2_x86
        return f"{murmur2_x86(source, get_tmp_hash_seed())}.py"
    except ImportError:   # pragma: no cover - ipykernel is a dependency of the grader
        return ""


def installed() -> bool:
    return _STATE is not None


def short_name(dotted: str) -> str:
    return str(dotted).rpartition(".")[2]


def _locate(dotted: str):
    """``(owner, attribute name, object)`` for a dotted name: a module attribute or a class attribute."""
    dotted = str(dotted)
    if not (dotted == "attention_np" or dotted.startswith("attention_np.")):
        raise ValueError(f"{dotted!r} is not a name inside attention_np")
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for depth, attr in enumerate(parts[cut:]):
            if not hasattr(owner, attr):
                raise ValueError(f"{dotted!r}: {'.'.join(parts[:cut + depth])} has no attribute {attr!r}")
            if depth == len(parts) - cut - 1:
                return owner, attr, getattr(owner, attr)
            owner = getattr(owner, attr)
    raise ValueError(f"{dotted!r}: no importable attention_np module in this name")


def resolve(dotted: str, callable_only: bool = False):
    """The object named by a dotted name inside attention_np (``module.attr``, ``module.Class[.method]``)."""
    obj = _locate(dotted)[2]
    if callable_only and not callable(obj):
        raise ValueError(f"{dotted!r} is not a function, class or method")
    return obj


# ------------------------------------------------------------------------------ state
class _State:
    def __init__(self, config):
        self.off_limits = {gid: set(spec.get("off_limits", [])) for gid, spec in config.items()}
        self.cell_gids = {}                 # cell file base name -> exercise ids (stubs may coincide)
        for gid, spec in config.items():
            for name in spec.get("cells", []):
                self.cell_gids.setdefault(name, []).append(gid)
        self.violations = {}                # gid -> first reason
        self.originals = {}                 # dotted name -> original object
        for names in self.off_limits.values():
            for dotted in names:
                self.originals[dotted] = resolve(dotted, callable_only=True)
        self.modules = {name: dict(vars(mod)) for name, mod in list(sys.modules.items())
                        if mod is not None and (name == "attention_np" or name.startswith("attention_np."))}
        self.protected = {}   # taken by install() once the proxies are in place

    # -- frames
    def classify(self, code):
        """("student", [gids]) for a solution cell's code, "cell" for another cell's, else None."""
        filename = code.co_filename or ""
        base = os.path.basename(filename)
        parent = os.path.basename(os.path.dirname(filename))
        if parent.startswith("ipykernel_") and base.endswith(".py"):
            gids = self.cell_gids.get(base)
            return ("student", gids) if gids else "cell"
        return None

    def caller(self, frame):
        """The exercises whose solution cell makes this call, or None when a locked/check cell does.

        The nearest notebook cell on the stack decides; library code, numpy, functools and
        ``exec``'d strings in between are transparent (so ``layer(x)`` reaching an off-limits
        ``forward`` through the library's ``Module.__call__`` is still the student's call).
        """
        while frame is not None:
            kind = self.classify(frame.f_code)
            if kind == "cell":
                return None
            if kind is not None:
                return kind[1]
            frame = frame.f_back
        return None

    def student_on_stack(self, frame):
        while frame is not None:
            kind = self.classify(frame.f_code)
            if isinstance(kind, tuple):
                return kind[1]
            frame = frame.f_back
        return None

    def violation(self, gid, message):
        self.violations.setdefault(gid, message)
        return OffLimitsError(message)

    # -- tampering
    def _protected_snapshot(self):
        import numpy
        from . import checks
        import attention_np.grading as grading
        mods = {"numpy": numpy}
        for sub in ("random", "linalg", "testing", "fft"):
            mod = getattr(numpy, sub, None)
            if mod is not None:
                mods[f"numpy.{sub}"] = mod
        mods["attention_np.grading"] = grading
        mods["attention_np.grading.checks"] = checks
        snap = {}
        for label, mod in mods.items():
            snap[label] = (mod, {k: v for k, v in vars(mod).items() if callable(v) and not k.startswith("__")})
        skip = {"exit", "quit", "get_ipython", "display", "help", "copyright", "credits", "license",
                "input", "raw_input", "breakpoint"}   # ipykernel and IPython rebind these per request
        snap["builtins"] = (builtins, {k: v for k, v in vars(builtins).items()
                                       if not k.startswith("_") and k not in skip} | {"__import__": builtins.__import__})
        # The library itself: a reference (or check_function, which reads gradcheck.numerical_gradient) calls
        # other library functions and methods through module globals and class attributes, so a solution cell
        # that rebinds one of them could make the reference agree with a wrong answer.
        for name, mod in sorted(sys.modules.items()):
            if mod is None or not (name == "attention_np" or name.startswith("attention_np.")) or name == __name__:
                continue
            snap.setdefault(name, (mod, {k: v for k, v in vars(mod).items()
                                         if callable(v) and not k.startswith("__")}))
            for key, cls in vars(mod).items():
                if (inspect.isclass(cls) and str(getattr(cls, "__module__", "")).startswith("attention_np")
                        and getattr(cls, "__module__", "") == name):
                    snap[f"{name}.{key}"] = (cls, {k: v for k, v in vars(cls).items()
                                                   if not k.startswith("__") and (
                                                       inspect.isfunction(v) or isinstance(v, (staticmethod,
                                                                                               classmethod, property)))})
        self.sys_modules = {name: sys.modules.get(name) for name in
                            ("numpy", "attention_np", "attention_np.grading", "attention_np.grading.checks",
                             "attention_np.grading.guard", "builtins")}
        return snap

    def tampered(self):
        """What a solution cell replaced, or None."""
        for name, mod in self.sys_modules.items():
            if sys.modules.get(name) is not mod:
                return f"sys.modules[{name!r}]"
        for label, (mod, values) in self.protected.items():
            current = vars(mod)   # a class's mappingproxy or a module's dict
            for key, value in values.items():
                if current.get(key) is not value:
                    return f"{label}.{key}"
        return None


# ------------------------------------------------------------------------------ proxies
def _function_proxy(state, dotted, original, label):
    def guarded(*args, **kwargs):
        gids = state.caller(sys._getframe(1))
        if gids:
            hit = [g for g in gids if dotted in state.off_limits.get(g, ())]
            if hit:
                raise state.violation(hit[0], f"{hit[0]} calls attention_np's {label}, "
                                              "which this exercise asks you to write")
        return original(*args, **kwargs)

    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        try:
            setattr(guarded, attr, getattr(original, attr))
        except (AttributeError, TypeError):
            pass
    try:
        guarded.__signature__ = inspect.signature(original)
    except (TypeError, ValueError):
        pass
    return guarded


def _wrap_class(state, dotted, cls):
    for key, value in list(vars(cls).items()):
        if isinstance(value, staticmethod):
            setattr(cls, key, staticmethod(_function_proxy(state, dotted, value.__func__, short_name(dotted))))
        elif isinstance(value, classmethod):
            setattr(cls, key, classmethod(_function_proxy(state, dotted, value.__func__, short_name(dotted))))
        elif inspect.isfunction(value):
            setattr(cls, key, _function_proxy(state, dotted, value, short_name(dotted)))


def _replace_everywhere(original, proxy):
    """Put ``proxy`` wherever a loaded attention_np module holds ``original`` (by identity)."""
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "attention_np" or name.startswith("attention_np.")):
            continue
        if name == __name__:
            continue
        namespace = vars(mod)
        for key, value in list(namespace.items()):
            if value is original:
                namespace[key] = proxy
            elif isinstance(value, dict):             # registries: {"name": function}
                for k, v in list(value.items()):
                    if v is original:
                        value[k] = proxy


class _Watch:
    """Which notebook globals a solution cell replaced after a locked cell had set them (IPython events)."""

    def __init__(self, state, namespace):
        self.state, self.ns = state, namespace
        self.before = self._values()
        self.owner = {name: "locked" for name in self.before}   # name -> "locked" | "student"
        self.replaced = {}                                         # name -> exercise whose answer replaced it

    def _values(self):
        return {k: v for k, v in self.ns.items() if not k.startswith("_")}

    def pre(self, info=None):
        self.before = self._values()

    def post(self, result=None):
        raw = getattr(getattr(result, "info", None), "raw_cell", None) or ""
        gids = self.state.cell_gids.get(cell_file_name(raw))
        now = self._values()
        for name, value in now.items():
            if name in self.before and self.before[name] is value:
                continue
            if gids:
                if self.owner.get(name) == "locked":
                    self.replaced[name] = gids[0]
                self.owner[name] = "student"
            else:
                self.owner[name] = "locked"
                self.replaced.pop(name, None)
        self.before = now


def _watch_notebook(state):
    try:
        from IPython import get_ipython
    except ImportError:   # pragma: no cover
        return None
    shell = get_ipython()
    if shell is None:
        return None
    watch = _Watch(state, shell.user_ns)
    shell.events.register("pre_run_cell", watch.pre)
    shell.events.register("post_run_cell", watch.post)
    return watch


def install(config) -> None:
    """Guard the off-limits objects. ``config``: ``{gid: {"off_limits": [dotted], "cells": [file names]}}``."""
    global _STATE
    if _STATE is not None:
        return
    import attention_np  # noqa: F401 - loads the package and its re-exports
    import pkgutil
    for package in ("attention_np.nn", "attention_np.mechanisms", "attention_np.train"):
        # every module a reference may call into is loaded now, so the snapshot below covers it
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__, package + "."):
            importlib.import_module(info.name)
    state = _State(config)
    for dotted, original in state.originals.items():
        owner, attr, _ = _locate(dotted)
        label = short_name(dotted)
        if inspect.isclass(original):
            _wrap_class(state, dotted, original)
        elif inspect.isclass(owner):                     # one method of a class
            raw = vars(owner).get(attr, original)
            if isinstance(raw, staticmethod):
                setattr(owner, attr, staticmethod(_function_proxy(state, dotted, raw.__func__, label)))
            elif isinstance(raw, classmethod):
                setattr(owner, attr, classmethod(_function_proxy(state, dotted, raw.__func__, label)))
            else:
                setattr(owner, attr, _function_proxy(state, dotted, raw, f"{owner.__name__}.{attr}"))
        else:
            _replace_everywhere(original, _function_proxy(state, dotted, original, label))
    state.protected = state._protected_snapshot()
    state.watch = _watch_notebook(state)
    _STATE = state


def reference(dotted: str):
    """The original library object (what check cells compare against); refuses student callers."""
    state = _STATE
    if state is None:
        return resolve(dotted)
    gids = state.student_on_stack(sys._getframe(1))
    if gids:
        raise state.violation(gids[0], f"{gids[0]} calls attention_np.grading.reference, "
                                       "which only the hidden check cells may use")
    if dotted in state.originals:
        original = state.originals[dotted]
        if inspect.isclass(original) or not callable(original):
            return original                        # a class's methods are already guarded in place
        # A check may bind the reference to a name an answer also uses (``softmax = reference(...)``
        # rebinds the notebook global ``softmax``): hand out a proxy that still refuses the student.
        proxies = state.__dict__.setdefault("reference_proxies", {})
        if dotted not in proxies:
            proxies[dotted] = _function_proxy(state, dotted, original, short_name(dotted))
        return proxies[dotted]
    module_name, _, attr = str(dotted).rpartition(".")
    snapshot = state.modules.get(module_name)
    if snapshot is not None and attr in snapshot:
        return snapshot[attr]
    return resolve(dotted)


def _verify(gid):
    state = _STATE
    if state is None:
        return
    what = state.tampered()
    if what is not None:
        state.violations.setdefault(gid, f"{gid}: a solution cell replaced {what}, which the checks rely on; "
                                         "the check cannot be trusted")
        raise TamperingError(state.violations[gid])
    if gid in state.violations:
        raise OffLimitsError(state.violations[gid])


def enter_check(gid: str, builtins_used=(), globals_used=()) -> None:
    """First line of a graded check cell: fail it if its answer broke the rules so far.

    ``builtins_used``: the Python built-ins the check reads; a notebook global of that name
    (``def isinstance(...)`` in a solution cell) would silently replace them in the check.
    ``globals_used``: the notebook globals it reads; one that a locked cell set (a helper such as
    ``random_problem``) and a solution cell then replaced fails the check.
    """
    _verify(gid)
    state = _STATE
    if state is None:
        return
    namespace = sys._getframe(1).f_globals
    hidden = [name for name in builtins_used if name in namespace]
    if hidden:
        message = (f"{gid}: the notebook defines {', '.join(repr(n) for n in hidden)}, which hides Python's "
                   "built-in the check uses; rename it in your code")
        state.violations.setdefault(gid, message)
        raise TamperingError(message)
    watch = getattr(state, "watch", None)
    replaced = [name for name in globals_used if watch is not None and name in watch.replaced]
    if replaced:
        message = (f"{gid}: a solution cell ({watch.replaced[replaced[0]]}) replaced "
                   f"{', '.join(repr(n) for n in replaced)}, which a locked cell defines and the check uses; "
                   "rename it in your code")
        state.violations.setdefault(gid, message)
        raise TamperingError(message)


def leave_check(gid: str) -> None:
    """Last line of a graded check cell: fail it if the answer broke the rules while the check ran."""
    _verify(gid)


# ------------------------------------------------------------------------------ static scan
_SUSPICIOUS = [
    (r"\b__closure__\b|\bgc\.get_(?:referents|referrers|objects)\b|\bctypes\b|\bsys\._getframe\b"
     r"|\binspect\.(?:currentframe|stack)\b|\b__code__\b|\bsys\.setprofile\b|\bsys\.settrace\b",
     "uses interpreter introspection"),
    (r"\battention_np\.grading\b|\bfrom\s+attention_np\s+import\s+grading\b", "touches attention_np.grading"),
    (r"\bbuiltins\b|\b__builtins__\b", "touches builtins"),
]


def static_warnings(gid: str, source: str, off_limits) -> list:
    """Warnings (never verdicts) for an answer's text: off-limits names used as library names, introspection."""
    found = []
    for dotted in off_limits or ():
        name = re.escape(short_name(dotted))
        if re.search(rf"(?:\.\s*|import\s+[\w, ]*|[\"']){name}\b", source):
            found.append(f"{gid}'s answer mentions attention_np's {short_name(dotted)}, which it may not call "
                         "(checked while grading)")
    for pattern, what in _SUSPICIOUS:
        if re.search(pattern, source):
            found.append(f"{gid}'s answer {what}; look at it by hand")
    return found
