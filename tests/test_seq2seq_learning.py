"""Learning test for the sequence-to-sequence family: a GRU encoder-decoder with
additive (Bahdanau) attention, trained with our own backward passes and Adam,
learns to reverse sequences, and its attention is anti-diagonal.

Model (everything hand-differentiated, nothing but NumPy):

    source ids (B, m) -> Embedding -> bidirectional GRU -> annotations h_j (B, m, 2H)
    BOS + target[:-1] (B, n) -> Embedding -> GRU -> decoder states s_i (B, n, H)
    c_i = AdditiveAttention(query = s_i, keys = values = h_j, source padding mask)   (B, n, 2H)
    logits_i = Linear([s_i; c_i])                                                     (B, n, V)

Simplification, stated: the decoder is teacher-forced and attends *after* its
GRU step with its current state (Luong's ordering, no input feeding), instead
of Bahdanau's ``s_{i-1}`` attending *before* the step with ``c_i`` fed into the
GRU.  That lets one AdditiveAttention call cover all decoder steps at once and
keeps the test to a few seconds; the score function is Bahdanau's.  Evaluation
is free-running (greedy decoding), not teacher-forced.
"""
import numpy as np

from attention_np.mechanisms.additive import AdditiveAttention
from attention_np.nn.embedding import Embedding
from attention_np.nn.linear import Linear
from attention_np.nn.losses import cross_entropy, cross_entropy_backward
from attention_np.nn.module import Module
from attention_np.nn.recurrent import GRU
from attention_np.train.data import iterate_minibatches, reverse_task
from attention_np.train.gradcheck import TOLERANCE, check_module
from attention_np.train.optim import Adam, clip_grad_norm

VOCAB, MIN_LEN, MAX_LEN = 6, 3, 6                  # ids 1..5 are tokens, 0 is padding
BOS = VOCAB                                        # an extra id for the decoder's first input


class Seq2Seq(Module):
    def __init__(self, vocab, d_embed, d_hidden, d_att, rng):
        super().__init__()
        self.src_embedding = Embedding(vocab, d_embed, rng=rng)
        self.encoder = GRU(d_embed, d_hidden, bidirectional=True, rng=rng)
        self.tgt_embedding = Embedding(vocab + 1, d_embed, rng=rng)
        self.decoder = GRU(d_embed, d_hidden, rng=rng)
        self.attention = AdditiveAttention(d_hidden, 2 * d_hidden, d_att, rng=rng)
        self.out = Linear(3 * d_hidden, vocab, rng=rng)

    def forward(self, src, tgt_in, src_mask, tgt_mask=None):
        d_hidden = self.decoder.d_hidden
        annotations = self.encoder(self.src_embedding(src), mask=src_mask)      # (B, m, 2H)
        states = self.decoder(self.tgt_embedding(tgt_in), mask=tgt_mask)        # (B, n, H)
        context = self.attention(states, annotations, annotations, mask=src_mask[:, None, :])  # (B, n, 2H)
        self.cache = d_hidden
        return self.out(np.concatenate([states, context], axis=-1))             # (B, n, V)

    def backward(self, dlogits):
        d_hidden = self.cache
        dsc = self.out.backward(dlogits)                                        # (B, n, 3H)
        dstates, dcontext = dsc[..., :d_hidden], dsc[..., d_hidden:]
        dquery, dkeys, dvalues = self.attention.backward(dcontext)
        self.tgt_embedding.backward(self.decoder.backward(dstates + dquery))
        self.src_embedding.backward(self.encoder.backward(dkeys + dvalues))     # key and value paths add
        return None


def _decoder_inputs(targets, bos=BOS):
    """Teacher forcing: the decoder reads BOS, then the true previous tokens."""
    return np.concatenate([np.full((targets.shape[0], 1), bos), targets[:, :-1]], axis=1)


def _greedy(model, src, src_mask, n):
    """Free-running decoding: feed back the model's own previous prediction."""
    tokens = np.full((src.shape[0], 1), BOS)
    for _ in range(n):                              # decoder steps (the loop is the decoding)
        logits = model(src, tokens, src_mask)
        tokens = np.concatenate([tokens, logits[:, -1].argmax(axis=-1)[:, None]], axis=1)
    return tokens[:, 1:], model.attention.weights   # predictions (B, n), weights (B, n, m)


def test_composed_model_gradients():
    """The glue (concatenation, key + value paths, two embeddings) is differentiated correctly."""
    rng = np.random.default_rng(0)
    model = Seq2Seq(4, 2, 2, 3, rng)
    data = reverse_task(rng, 2, 2, 5, 4)
    errors = check_module(model, data.inputs, _decoder_inputs(data.targets, bos=4), data.mask, data.mask, details=True)
    assert len(errors) == len(list(model.parameters())) == 16
    assert max(errors.values()) < TOLERANCE, errors


def test_gru_encoder_decoder_with_additive_attention_learns_to_reverse():
    rng = np.random.default_rng(0)
    train = reverse_task(rng, 1000, MIN_LEN, MAX_LEN, VOCAB)
    test = reverse_task(rng, 300, MIN_LEN, MAX_LEN, VOCAB)
    model = Seq2Seq(VOCAB, 8, 16, 16, rng)
    opt = Adam(model, lr=0.02)
    for epoch in range(8):
        for batch in iterate_minibatches(train, 50, rng):
            mask = batch.mask
            logits = model(batch.inputs, _decoder_inputs(batch.targets), mask, mask)
            model.zero_grad()
            model.backward(cross_entropy_backward(logits, batch.targets, mask=mask))
            clip_grad_norm(model, 5.0)
            opt.step()
    loss = cross_entropy(model(test.inputs, _decoder_inputs(test.targets), test.mask, test.mask),
                         test.targets, mask=test.mask)
    assert loss < 0.2, loss

    predictions, weights = _greedy(model, test.inputs, test.mask, MAX_LEN)
    mask = test.mask
    accuracy = np.mean(predictions[mask] == test.targets[mask])
    assert accuracy >= 0.95, accuracy
    # output step i of a length-L sequence should look at source position L - 1 - i
    expected = test.lengths[:, None] - 1 - np.arange(MAX_LEN)[None, :]      # (B, n)
    alignment = np.mean(weights.argmax(axis=-1)[mask] == expected[mask])
    assert alignment >= 0.90, alignment
    assert np.all(weights[~np.broadcast_to(mask[:, None, :], weights.shape)] == 0.0)  # never on padding
