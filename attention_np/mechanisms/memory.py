r"""End-To-End Memory Networks (Sukhbaatar, Szlam, Weston, Fergus, NeurIPS 2015).

Paper: *End-To-End Memory Networks*, section 2 (eqs. 1-3 for one hop, 2.2 for
several hops and weight tying, 4.1 for position encoding and temporal
encoding).  Chapter 14.

The paper's embeddings are ``d x V`` matrices applied to one-hot columns; we
store them as lookup tables ``(V, d)`` (row ``w`` is the embedding of word
``w``), so ``A x_{ij}`` is ``A[story[b, i, j]]``.  Shapes: story ``(B, N, J)``
(``N`` sentences of ``J`` word ids), query ``(B, J)``, memories ``(B, N, d)``,
``u (B, d)``, ``p (B, N)``, logits ``(B, V)``.

.. math::
    l_{kj} = (1 - j/J) - (k/d)(1 - 2j/J)  \quad (j = 1..J \text{ word}, k = 1..d \text{ dim})\\
    m_i = \sum_j l_j \odot A x_{ij} + T_A(i),\qquad c_i = \sum_j l_j \odot C x_{ij} + T_C(i),\qquad
    u^1 = \sum_j l_j \odot B q_j\\
    p^k = \operatorname{softmax}(u^{k\top} m^k_i)_{i=1..N},\quad o^k = \sum_i p^k_i c^k_i,\quad
    u^{k+1} = u^k + o^k \ \ (\text{layer-wise: } u^{k+1} = H u^k + o^k)\\
    \text{logits} = W u^{K+1}

Weight tying.  *adjacent*: ``A^{k+1} = C^k``, ``W^T = C^K``, ``B = A^1`` (the
temporal tables are tied the same way, ``T_A^{k+1} = T_C^k``), so there are
``K + 1`` embedding tables, stored as ``A_1, C_1, ..., C_K``; the answer is
``logits = u^{K+1} C_K^T``.  *layerwise*: ``A^k = A``, ``C^k = C`` for every
hop, plus separate ``B``, ``W (V, d)`` and the ``(d, d)`` map ``H``.

Backward (derived in Chapter 14, Section 14.5): ``dW = dlogits^T u^{K+1}``,
``du^{K+1} = dlogits W``; per hop, in reverse: ``dp_i = do . c_i``,
``dc_i = p_i do``, softmax backward -> ``ds``, ``dm_i = ds_i u^k``,
``du^k = sum_i ds_i m_i + du^{k+1}`` (times ``H^T`` when layer-wise).
Embedding gradients are scatter-adds (``np.add.at``): word ``j`` of sentence
``i`` adds ``l_j * dm_i`` into row ``story[b, i, j]``; a tied table accumulates
the gradients of every role it plays.

Linear start (from the paper's bAbI training, as in the authors' released bAbI
code): while ``linear_start`` is True the hop softmaxes are removed,
``p^k = u^{k\top} m^k_i`` (zero on masked slots), and the backward skips the
softmax Jacobian (``ds = dp``); training then sets it back to False.

Word id ``nil_id`` (default 0, the project's PAD) embeds to the zero vector, so
sentences shorter than ``J`` can be padded; ``mask (B, N)`` hides empty memory
slots (they would otherwise still carry their temporal vector ``T_A(i)``).
"""
from __future__ import annotations

import numpy as np

from ..nn.functional import softmax, softmax_backward
from ..nn.module import Module, default_rng
from ..nn.validate import as_float_array, check_int_array, check_mask, shape_error


def position_encoding(sentence_len: int, d_embed: int) -> np.ndarray:
    r"""Position-encoding weights ``l (J, d)`` with ``l[j-1, k-1] = (1 - j/J) - (k/d)(1 - 2j/J)``.

    Rows are word positions ``j = 1..J``, columns embedding dimensions
    ``k = 1..d`` (the transpose of the paper's ``l_{kj}`` written as a ``d x J``
    matrix), so ``sum_j l[j] * E[x_j]`` embeds a sentence of ``J`` words.
    """
    J, d = int(sentence_len), int(d_embed)
    if J < 1 or d < 1:
        raise ValueError(f"sentence_len and d_embed must be positive, got {sentence_len}, {d_embed}")
    j = np.arange(1, J + 1, dtype=np.float64)[:, None]     # (J, 1), 1-based word index
    k = np.arange(1, d + 1, dtype=np.float64)[None, :]     # (1, d), 1-based dimension index
    return (1.0 - j / J) - (k / d) * (1.0 - 2.0 * j / J)   # (J, d)


class MemoryNetwork(Module):
    """MemN2N with position encoding, temporal encoding and adjacent or layer-wise tying.

    ``MemoryNetwork(vocab_size, d_embed, n_hops, n_memories, sentence_len,
    tying="adjacent")``.  ``roles`` maps each role (``"B"``, ``"A"`` and ``"C"``
    per hop, ``"W"``, ``"T_A"``, ``"T_C"``) to the name of the parameter that
    plays it.  After ``forward``: ``.hop_weights``, a list of ``(B, N)`` arrays, one
    per hop; ``.weights`` is the last of them.  Set ``.linear_start = True`` to
    train without the hop softmaxes (the paper's "linear start"; ``hop_weights``
    then hold the raw scores), False (the default) to put them back.
    """

    def __init__(self, vocab_size: int, d_embed: int, n_hops: int, n_memories: int, sentence_len: int,
                 tying: str = "adjacent", nil_id: int | None = 0, init_std: float = 0.1, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.V, self.d, self.K = int(vocab_size), int(d_embed), int(n_hops)
        self.n_memories, self.J = int(n_memories), int(sentence_len)
        if self.K < 1:
            raise ValueError(f"n_hops must be at least 1, got {n_hops}")
        if tying not in ("adjacent", "layerwise"):
            raise ValueError(f"tying must be 'adjacent' or 'layerwise', got {tying!r}")
        self.tying, self.nil_id = tying, nil_id
        V, d, N, K = self.V, self.d, self.n_memories, self.K

        def table(name, rows):
            return self.add_param(name, rng.normal(0.0, init_std, size=(rows, d)))

        if tying == "adjacent":
            table("A_1", V)                                 # A^1 = B
            table("T_A_1", N)
            for k in range(1, K + 1):
                table(f"C_{k}", V)                          # C^k = A^{k+1}; C^K = W^T
                table(f"T_C_{k}", N)                        # T_C^k = T_A^{k+1}
            self.roles = {
                "B": "A_1", "W": f"C_{K}",
                "A": ["A_1"] + [f"C_{k}" for k in range(1, K)], "C": [f"C_{k}" for k in range(1, K + 1)],
                "T_A": ["T_A_1"] + [f"T_C_{k}" for k in range(1, K)], "T_C": [f"T_C_{k}" for k in range(1, K + 1)],
            }
        else:
            for name in ("A", "B", "C", "W"):
                table(name, V)
            table("T_A", N)
            table("T_C", N)
            self.add_param("H", np.eye(d) + rng.normal(0.0, init_std, size=(d, d)))
            self.roles = {"B": "B", "W": "W", "A": ["A"] * K, "C": ["C"] * K, "T_A": ["T_A"] * K, "T_C": ["T_C"] * K}
        self.l = position_encoding(self.J, d)               # (J, d)
        self.hop_weights: list[np.ndarray] = []
        self.weights = None
        self.linear_start = False                           # True: p^k = scores, no softmax

    # -- sentence embedding: sum_j l_j * E[x_j] (nil words embed to zero) ---------------
    def _keep(self, ids):
        if self.nil_id is None:
            return np.ones(ids.shape, dtype=bool)
        return ids != self.nil_id

    def _embed(self, name, ids, keep):
        E = self.params[name]
        lk = self.l.astype(E.dtype) * keep[..., None]                        # (..., J, d): l_j, 0 for nil words
        return np.einsum("...jd,...jd->...d", E[ids], lk)                    # (..., J, d) -> (..., d)

    def _embed_backward(self, name, ids, keep, dout):
        contrib = dout[..., None, :] * (self.l.astype(dout.dtype) * keep[..., None])  # (..., J, d): l_j * dout where kept
        # scatter-add into rows: np.add.at(grad, ids, contrib) over (n, d) rows, written on the flat
        # element indices ids * d + k, which NumPy adds several times faster (same sums)
        grad = self.grads[name]                                                        # (V, d)
        if not grad.flags.c_contiguous:                                                # reshape would copy
            np.add.at(grad, ids.reshape(-1), contrib.reshape(-1, self.d))
            return
        flat = (ids.reshape(-1, 1) * self.d + np.arange(self.d)).reshape(-1)          # (n * d,)
        np.add.at(grad.reshape(-1), flat, contrib.reshape(-1))

    # -- forward / backward --------------------------------------------------------------
    def forward(self, story, query, mask=None) -> np.ndarray:
        """``story (B, N, J)`` and ``query (B, J)`` int ids -> logits ``(B, V)``; ``mask (B, N)`` optional."""
        story = check_int_array(story, "story", high=self.V, expected=f"(B, N, J={self.J})")
        if story.ndim != 3 or story.shape[2] != self.J or not 1 <= story.shape[1] <= self.n_memories:
            raise shape_error("story", f"(B, N<={self.n_memories}, J={self.J})", story)
        B, N, _ = story.shape
        query = check_int_array(query, "query", high=self.V, expected=f"(B={B}, J={self.J})")
        if query.shape != (B, self.J):
            raise shape_error("query", f"(B={B}, J={self.J})", query)
        if mask is not None:
            mask = np.broadcast_to(check_mask(mask, (B, N), "mask"), (B, N))
        keep_s, keep_q = self._keep(story), self._keep(query)
        r, linear = self.roles, bool(self.linear_start)
        u = self._embed(r["B"], query, keep_q)                               # (B, d) u^1
        hops, self.hop_weights, embedded = [], [], {}
        for k in range(self.K):                                              # the hops ARE the recurrence
            for name in (r["A"][k], r["C"][k]):                              # a tied table embeds the story once
                if name not in embedded:
                    embedded[name] = self._embed(name, story, keep_s)        # (B, N, d)
            m = embedded[r["A"][k]] + self.params[r["T_A"][k]][:N]           # (B, N, d) keys
            c = embedded[r["C"][k]] + self.params[r["T_C"][k]][:N]           # (B, N, d) values
            scores = np.einsum("bnd,bd->bn", m, u)                          # (B, N)
            if linear:                                                       # linear start: no softmax
                p = scores if mask is None else np.where(mask, scores, 0.0)   # (B, N)
            else:
                p = softmax(scores, axis=-1, mask=mask)                      # (B, N)
            o = np.einsum("bn,bnd->bd", p, c)                                # (B, d)
            hops.append((u, m, c, p))
            u = (u @ self.params["H"] if self.tying == "layerwise" else u) + o   # (B, d) u^{k+1}
            self.hop_weights.append(p)
        self.weights = self.hop_weights[-1]                                  # (B, N) the last hop's
        self.cache = (story, query, keep_s, keep_q, hops, u, mask, linear)
        return u @ self.params[r["W"]].T                                     # (B, d) @ (d, V) -> (B, V)

    def backward(self, dlogits) -> None:
        """Accumulate every parameter gradient from ``dlogits (B, V)``; ids have no gradient (returns None)."""
        story, query, keep_s, keep_q, hops, u_last, mask, linear = self.cache
        dlogits = as_float_array(dlogits, "dlogits")
        if dlogits.shape != (story.shape[0], self.V):
            raise shape_error("dlogits", f"(B={story.shape[0]}, V={self.V})", dlogits)
        N, r = story.shape[1], self.roles
        self.grads[r["W"]] += dlogits.T @ u_last                             # (V, B) @ (B, d) -> (V, d)
        du = dlogits @ self.params[r["W"]]                                   # (B, V) @ (V, d) -> (B, d)
        d_embedded = {}                     # table name -> summed gradient of its story embedding (B, N, d)
        for k in reversed(range(self.K)):                                    # back through the hops
            u, m, c, p = hops[k]
            do = du                                                          # u^{k+1} = (u^k or u^k H) + o^k
            if self.tying == "layerwise":
                self.grads["H"] += u.T @ du                                  # (d, d)
                du = du @ self.params["H"].T
            dp = np.einsum("bnd,bd->bn", c, do)                              # (B, N)
            dc = p[..., None] * do[:, None, :]                               # (B, N, d)
            if linear:                                                       # p = scores (masked: 0)
                ds = dp if mask is None else np.where(mask, dp, 0.0)         # (B, N)
            else:
                ds = softmax_backward(dp, p)                                 # (B, N), zero where masked
            dm = ds[..., None] * u[:, None, :]                               # (B, N, d)
            du = du + np.einsum("bn,bnd->bd", ds, m)                         # (B, d)
            self.grads[r["T_A"][k]][:N] += dm.sum(axis=0)
            self.grads[r["T_C"][k]][:N] += dc.sum(axis=0)
            for name, g in ((r["A"][k], dm), (r["C"][k], dc)):              # a tied table collects every role
                d_embedded[name] = d_embedded[name] + g if name in d_embedded else g
        for name, g in d_embedded.items():                                   # then one scatter-add per table
            self._embed_backward(name, story, keep_s, g)
        self._embed_backward(r["B"], query, keep_q, du)
        return None
