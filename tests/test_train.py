"""Gradient checker, optimisers and synthetic data."""
import numpy as np
import pytest

from attention_np.nn import Linear, Module
from attention_np.train import (
    SGD, Adam, TOLERANCE, Vocab, check_function, check_module, clip_grad_norm, copy_task,
    iterate_minibatches, numerical_gradient, relative_error, reverse_task, sort_task,
)


def test_numerical_gradient_of_a_known_function():
    x = np.array([0.3, -1.2, 2.0])
    g = numerical_gradient(lambda: float(np.sum(np.sin(x) * x)), x)
    np.testing.assert_allclose(g, np.cos(x) * x + np.sin(x), rtol=1e-8)
    np.testing.assert_array_equal(x, [0.3, -1.2, 2.0])        # restored after perturbation
    with pytest.raises(ValueError, match="float64"):
        numerical_gradient(lambda: 0.0, x.astype(np.float32))


def test_relative_error_definition():
    assert relative_error(np.array([2.0, 4.0]), np.array([2.0, 4.4])) == pytest.approx(0.4 / 4.4)
    assert relative_error(np.zeros(3), np.full(3, 1e-11)) == pytest.approx(1e-11)   # absolute below 1


class _WrongLinear(Linear):
    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["b"] *= 1.01                                # 1 % error in one parameter
        return dx


def test_check_module_reports_every_input_and_parameter_and_catches_errors():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3))
    good = check_module(Linear(3, 2, rng=rng), x, details=True)
    assert set(good) == {"input0", "W", "b"} and max(good.values()) < TOLERANCE
    bad = check_module(_WrongLinear(3, 2, rng=rng), x, details=True)
    assert bad["b"] > 1e-4 and bad["W"] < TOLERANCE


def test_check_function_catches_a_wrong_backward():
    x = np.random.default_rng(1).standard_normal(5)
    assert check_function(np.tanh, lambda d, x: d * (1 - np.tanh(x) ** 2), x) < TOLERANCE
    assert check_function(np.tanh, lambda d, x: d * (1 - np.tanh(x)), x) > 1e-3


def _quadratic():
    class Quad(Module):
        def __init__(self):
            super().__init__()
            self.add_param("w", np.array([3.0, -2.0]))
    return Quad()


@pytest.mark.parametrize("make", [
    lambda m: SGD(m, lr=0.1), lambda m: SGD(m, lr=0.05, momentum=0.9), lambda m: Adam(m, lr=0.1),
])
def test_optimisers_minimise_a_quadratic(make):
    m = _quadratic()
    opt = make(m)
    for _ in range(300):
        opt.zero_grad()
        m.grads["w"] += 2 * m.params["w"]                      # d/dw |w|^2
        opt.step()
    assert np.linalg.norm(m.params["w"]) < 1e-2


def test_adam_first_step_has_size_lr_and_decoupled_decay():
    m = _quadratic()
    opt = Adam(m, lr=0.01)
    m.grads["w"][:] = [100.0, -0.001]
    opt.step()
    np.testing.assert_allclose(m.params["w"], [3.0 - 0.01, -2.0 + 0.01], rtol=1e-6)
    m2 = _quadratic()
    Adam(m2, lr=0.1, weight_decay=0.5).step()                  # zero gradient: only the decay acts
    np.testing.assert_allclose(m2.params["w"], [3.0 * 0.95, -2.0 * 0.95])


def test_clip_grad_norm():
    m = _quadratic()
    m.grads["w"][:] = [3.0, 4.0]
    assert clip_grad_norm(m, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(m.grads["w"], [0.6, 0.8])


def test_tasks_are_seeded_padded_and_correct():
    t = reverse_task(np.random.default_rng(0), 50, 2, 6, 10)
    t2 = reverse_task(np.random.default_rng(0), 50, 2, 6, 10)
    np.testing.assert_array_equal(t.inputs, t2.inputs)
    assert t.inputs.shape == (50, 6) and t.lengths.min() >= 2 and t.lengths.max() <= 6
    for i in range(50):
        L = t.lengths[i]
        np.testing.assert_array_equal(t.targets[i, :L], t.inputs[i, :L][::-1])
        assert np.all(t.inputs[i, L:] == 0) and np.all(t.targets[i, L:] == 0)
        assert np.all(t.inputs[i, :L] > 0)
    s = sort_task(np.random.default_rng(1), 20, 3, 5, 7)
    for i in range(20):
        L = s.lengths[i]
        np.testing.assert_array_equal(s.targets[i, :L], np.sort(s.inputs[i, :L]))
    c = copy_task(np.random.default_rng(2), 5, 4, 4, 3)
    np.testing.assert_array_equal(c.inputs, c.targets)
    assert c.mask.all()
    batches = list(iterate_minibatches(t, 16, np.random.default_rng(3)))
    assert [len(b) for b in batches] == [16, 16, 16, 2]
    with pytest.raises(ValueError, match="min_len"):
        copy_task(np.random.default_rng(0), 5, 0, 3, 5)


def test_vocab_round_trip():
    v = Vocab("the cat sat on the mat".split())
    assert len(v) == 6 and v.decode(v.encode(["cat", "mat"])) == ["cat", "mat"]
    assert v.encode(["<pad>"])[0] == 0
    with pytest.raises(ValueError, match="dog"):
        v.encode(["dog"])
