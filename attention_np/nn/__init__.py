"""Building blocks with hand-written backward passes (no mechanism lives here)."""
from .module import Module, default_rng, xavier_uniform
from .linear import Linear
from .norm import LayerNorm
from .embedding import Embedding
from .dropout import Dropout
from .recurrent import GRU, LSTM, GRUCell, LSTMCell
from .functional import (
    softmax, softmax_backward, masked_softmax, log_softmax, log_softmax_backward, logsumexp,
    tanh, tanh_backward, sigmoid, sigmoid_backward, relu, relu_backward,
    gelu, gelu_backward, elu, elu_backward, elu_plus_one, elu_plus_one_backward,
    causal_mask, padding_mask, unbroadcast,
)
from .losses import cross_entropy, cross_entropy_backward, mse, mse_backward

__all__ = [
    "Module", "default_rng", "xavier_uniform", "Linear", "LayerNorm", "Embedding", "Dropout",
    "GRU", "LSTM", "GRUCell", "LSTMCell",
    "softmax", "softmax_backward", "masked_softmax", "log_softmax", "log_softmax_backward", "logsumexp",
    "tanh", "tanh_backward", "sigmoid", "sigmoid_backward", "relu", "relu_backward",
    "gelu", "gelu_backward", "elu", "elu_backward", "elu_plus_one", "elu_plus_one_backward",
    "causal_mask", "padding_mask", "unbroadcast",
    "cross_entropy", "cross_entropy_backward", "mse", "mse_backward",
]
