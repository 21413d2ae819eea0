r"""Hierarchical attention networks (Yang, Yang, Dyer, He, Smola & Hovy 2016,
*Hierarchical Attention Networks for Document Classification*, NAACL;
Chapter 17).

A document is ``L`` sentences of ``T`` words.  Words are embedded
(:math:`x_{it} = W_e w_{it}`), read by a bidirectional GRU
(:math:`h_{it} = [\overrightarrow h_{it}; \overleftarrow h_{it}]`) and pooled
into a sentence vector by *attention pooling* with a learned context vector;
sentence vectors are read by a second BiGRU and pooled the same way into a
document vector ``v``, which a linear layer classifies.

Attention pooling (word level, then sentence level), row form, ``H (B, T, d_in)``,
``W (d_in, d_att)``, ``b (d_att,)`` and the context vector ``u (d_att,)``
(the paper's :math:`u_w` / :math:`u_s`, a fixed, learned "query"):

.. math::
    U = \tanh(H W + b),\qquad e = U u,\qquad
    \alpha = \operatorname{softmax}_t(e),\qquad s = \textstyle\sum_t \alpha_t h_t

so ``u = 0`` gives uniform weights over the valid words: mean pooling.
Backward (Chapter 17): ``dα = H ds``, ``dH = α dsᵀ`` (value path); ``de`` by the
masked softmax backward (Chapter 2); ``du = Uᵀ de``; ``dPre = (de uᵀ) ⊙ (1 - U²)``;
``dW = Hᵀ dPre``, ``db = Σ dPre``, ``dH += dPre Wᵀ`` (key path).  The GRUs are
trained by backpropagation through time (``attention_np.nn.recurrent``).

Padding is masked at both levels: ``word_mask (B, L, T)``, and the sentence
mask is "the sentence has at least one word".  An empty sentence gets zero
word weights, a zero sentence vector and zero sentence weight (never NaN).
"""
from __future__ import annotations

import numpy as np

from ..nn.embedding import Embedding
from ..nn.functional import softmax, softmax_backward
from ..nn.linear import Linear
from ..nn.module import Module, default_rng, xavier_uniform
from ..nn.recurrent import GRU, LSTM
from ..nn.validate import as_float_array, check_int_array, check_mask, shape_error

ENCODERS = ("gru", "lstm", "none")


def context_pooling(H, W, b, u, mask=None):
    """``H (B, T, d_in)`` -> ``(pooled (B, d_in), weights (B, T), U (B, T, d_att))``."""
    U = np.tanh(H @ W + b)                                  # (B, T, d_in) @ (d_in, d_att) -> (B, T, d_att)
    scores = U @ u                                          # (B, T): similarity to the context vector
    weights = softmax(scores, axis=-1, mask=mask)           # (B, T); masked -> 0, empty rows -> all 0
    pooled = np.einsum("bt,btd->bd", weights, H)            # (B, T) . (B, T, d_in) -> (B, d_in)
    return pooled, weights, U


def context_pooling_backward(dpooled, H, W, u, weights, U):
    """Backward of :func:`context_pooling`: ``-> (dH (B, T, d_in), dW (d_in, d_att), db (d_att,), du (d_att,))``.

    ``dpooled (B, d_in)``; ``H (B, T, d_in)``, ``W (d_in, d_att)`` and
    ``u (d_att,)`` as in the forward (``b`` is not needed); ``weights (B, T)``
    and ``U (B, T, d_att)``, the forward's second and third outputs.
    """
    dweights = np.einsum("bd,btd->bt", dpooled, H)          # (B, T)
    dH = weights[:, :, None] * dpooled[:, None, :]          # (B, T, d_in) value path
    dscores = softmax_backward(dweights, weights)           # (B, T); masked -> 0
    dpre = dscores[:, :, None] * u * (1.0 - U * U)          # (B, T, d_att)
    dH = dH + dpre @ W.T                                    # key path
    d_in, d_att = H.shape[-1], U.shape[-1]
    dW = H.reshape(-1, d_in).T @ dpre.reshape(-1, d_att)   # (d_in, d_att)
    db = dpre.sum(axis=(0, 1))                              # (d_att,)
    du = np.einsum("bt,btk->k", dscores, U)                 # (d_att,)
    return dH, dW, db, du


class AttentionPooling(Module):
    """HAN attention pooling with a learned context vector ``u``.

    Params ``W (d_in, d_att)``, ``b (d_att,)``, ``u (d_att,)``.
    ``forward(H (B, T, d_in), mask=None (B, T)) -> (B, d_in)``; ``.weights (B, T)``.
    ``backward(dpooled) -> dH``.
    """

    def __init__(self, d_in: int, d_att: int, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.d_in, self.d_att = int(d_in), int(d_att)
        self.add_param("W", xavier_uniform(rng, self.d_in, self.d_att))
        self.add_param("b", np.zeros(self.d_att))
        self.add_param("u", rng.uniform(-1.0, 1.0, size=self.d_att) / np.sqrt(self.d_att))
        self.weights = None

    def forward(self, H, mask=None) -> np.ndarray:
        """``H (B, T, d_in)`` -> ``pooled (B, d_in)``, the attention-weighted sum over ``T``.

        ``mask``: boolean, True = real position, ``(B, T)`` or ``(T,)``; a fully
        masked row gives zero weights and a zero vector.  ``.weights (B, T)``.
        Caches ``H``, the weights and ``U = tanh(H W + b)`` ``(B, T, d_att)``.
        """
        H = as_float_array(H, "H")
        if H.ndim != 3 or H.shape[2] != self.d_in:
            raise shape_error("H", f"(B, T, d_in={self.d_in})", H)
        if mask is not None:
            mask = check_mask(mask, H.shape[:2])
        p = self.params
        pooled, self.weights, U = context_pooling(H, p["W"], p["b"], p["u"], mask)
        self.cache = (H, self.weights, U)
        return pooled

    def backward(self, dpooled):
        """``dpooled (B, d_in)`` -> ``dH (B, T, d_in)`` (value path + key path).

        Adds ``dW (d_in, d_att)``, ``db (d_att,)`` and ``du (d_att,)`` into ``grads``.
        """
        H, weights, U = self.cache
        dpooled = as_float_array(dpooled, "dpooled")
        if dpooled.shape != (H.shape[0], self.d_in):
            raise shape_error("dpooled", f"(B={H.shape[0]}, d_in={self.d_in})", dpooled)
        dH, dW, db, du = context_pooling_backward(dpooled, H, self.params["W"], self.params["u"], weights, U)
        for name, g in (("W", dW), ("b", db), ("u", du)):
            self.grads[name] += g
        return dH


class HierarchicalAttention(Module):
    """HAN document classifier: embedding -> word BiGRU -> word attention ->
    sentence BiGRU -> sentence attention -> linear.

    ``encoder="gru"`` (the paper), ``"lstm"``, or ``"none"`` ("HAN-lite": no
    recurrent encoders, attention pools the embeddings and then the sentence
    vectors directly -- a deliberate simplification for fast notebooks).
    ``d_att`` (default: the width of the pooled vectors) sizes both attention layers.

    ``forward(docs (B, L, T) int, word_mask=None (B, L, T) bool) -> logits (B, n_classes)``;
    ``.word_weights (B, L, T)``, ``.sentence_weights (B, L)``, ``.sentence_mask (B, L)``;
    ``.weights`` is the last attention applied, the sentence weights.
    ``backward(dlogits)`` fills the gradients of every parameter and returns
    ``None`` (token ids have no gradient).
    """

    def __init__(self, vocab_size: int, d_embed: int, d_hidden: int, n_classes: int, encoder: str = "gru",
                 d_att: int | None = None, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        self.encoder = encoder
        self.embedding = Embedding(vocab_size, d_embed, rng=rng)       # W_e
        if encoder == "none":
            self.word_encoder = self.sentence_encoder = None
            d_word = d_sent = int(d_embed)
        else:
            rnn = GRU if encoder == "gru" else LSTM
            self.word_encoder = rnn(d_embed, d_hidden, bidirectional=True, rng=rng)
            d_word = 2 * int(d_hidden)
            self.sentence_encoder = rnn(d_word, d_hidden, bidirectional=True, rng=rng)
            d_sent = 2 * int(d_hidden)
        self.word_attention = AttentionPooling(d_word, int(d_att or d_word), rng=rng)      # W_w, b_w, u_w
        self.sentence_attention = AttentionPooling(d_sent, int(d_att or d_sent), rng=rng)  # W_s, b_s, u_s
        self.classifier = Linear(d_sent, n_classes, rng=rng)                              # W_c, b_c
        self.word_weights = self.sentence_weights = self.sentence_mask = self.weights = None

    def forward(self, docs, word_mask=None) -> np.ndarray:
        """Token ids ``docs (B, L, T)`` (``L`` sentences of ``T`` words) -> ``logits (B, n_classes)``.

        ``word_mask``: boolean, True = real word, ``(B, L, T)`` (or anything
        with at most two axes that broadcasts to it); a sentence with no word
        is masked at the sentence level.  ``.word_weights (B, L, T)``,
        ``.sentence_weights (B, L)``, ``.sentence_mask (B, L)``.  The
        sub-modules cache their own forward passes.
        """
        docs = check_int_array(docs, "docs", high=self.embedding.vocab_size, expected="(B, L, T) of token ids")
        if docs.ndim != 3:
            raise shape_error("docs", "(B, L, T)", docs)
        B, L, T = docs.shape
        if word_mask is None:
            word_mask = np.ones(docs.shape, dtype=bool)
        word_mask = np.broadcast_to(check_mask(word_mask, docs.shape, "word_mask"), docs.shape)
        sentence_mask = word_mask.any(axis=-1)                             # (B, L): sentence has a word
        flat_mask = word_mask.reshape(B * L, T)                            # (B*L, T)

        x = self.embedding(docs).reshape(B * L, T, -1)                     # (B*L, T, d_embed)
        if self.word_encoder is not None:
            x = self.word_encoder(x, mask=flat_mask)                       # (B*L, T, 2g)
        sentences = self.word_attention(x, flat_mask).reshape(B, L, -1)    # (B, L, d_word)
        h = sentences
        if self.sentence_encoder is not None:
            h = self.sentence_encoder(sentences, mask=sentence_mask)       # (B, L, 2g)
        document = self.sentence_attention(h, sentence_mask)               # (B, d_sent)
        logits = self.classifier(document)                                 # (B, n_classes)

        self.word_weights = self.word_attention.weights.reshape(B, L, T)
        self.sentence_weights = self.weights = self.sentence_attention.weights
        self.sentence_mask = sentence_mask
        self.cache = (B, L, T)
        return logits

    def backward(self, dlogits) -> None:
        """``dlogits (B, n_classes)`` -> ``None`` (token ids have no gradient).

        Backpropagates through the classifier, both attention layers, the
        encoders (through time) and the embedding, adding every parameter's
        gradient into the sub-modules' ``grads``.
        """
        B, L, T = self.cache
        dlogits = as_float_array(dlogits, "dlogits")
        n_classes = self.classifier.d_out
        if dlogits.shape != (B, n_classes):
            raise shape_error("dlogits", f"(B={B}, n_classes={n_classes})", dlogits)
        ddocument = self.classifier.backward(dlogits)                      # (B, d_sent)
        dh = self.sentence_attention.backward(ddocument)                   # (B, L, d_sent)
        dsentences = dh if self.sentence_encoder is None else self.sentence_encoder.backward(dh)
        dx = self.word_attention.backward(dsentences.reshape(B * L, -1))   # (B*L, T, d_word)
        if self.word_encoder is not None:
            dx = self.word_encoder.backward(dx)                            # (B*L, T, d_embed)
        self.embedding.backward(dx.reshape(B, L, T, -1))
        return None
