"""Training utilities: gradient checking, optimisers and synthetic data."""
from .gradcheck import TOLERANCE, check_function, check_module, numerical_gradient, relative_error
from .optim import SGD, Adam, clip_grad_norm
from .data import PAD, SequenceTask, Vocab, copy_task, iterate_minibatches, reverse_task, sort_task

__all__ = [
    "TOLERANCE", "check_function", "check_module", "numerical_gradient", "relative_error",
    "SGD", "Adam", "clip_grad_norm",
    "PAD", "SequenceTask", "Vocab", "copy_task", "iterate_minibatches", "reverse_task", "sort_task",
]
