"""Character-level language modelling: next-character cross-entropy on a token stream."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks import networks
from tasks.base import Task
from tasks.text_datasets import load_shakespeare_excerpt, load_tiny_shakespeare


def split_stream(tokens: np.ndarray, valid_fraction: float, test_fraction: float) -> dict:
    """Contiguous train/valid/test pieces of one token stream (in this order)."""
    n = len(tokens)
    n_test, n_valid = int(n * test_fraction), int(n * valid_fraction)
    return {
        "train": tokens[: n - n_valid - n_test],
        "valid": tokens[n - n_valid - n_test : n - n_test],
        "test": tokens[n - n_test :],
    }


def char_lm_task(
    name: str,
    splits: dict[str, np.ndarray],
    vocab_size: int,
    *,
    seq_len: int = 64,
    batch_size: int = 32,
    eval_batch_size: int = 128,
    embed_dim: int = 32,
    hidden: int = 128,
) -> Task:
    """Next-token prediction with an LSTM on random windows of `seq_len + 1` tokens."""
    for split, tokens in splits.items():
        if len(tokens) <= seq_len + 1:
            raise ValueError(f"{split} stream has {len(tokens)} tokens, need > {seq_len + 1}")
    net = networks.char_lstm(vocab_size, embed_dim, hidden)
    data = {k: jnp.asarray(v, jnp.int32) for k, v in splits.items()}

    def sampler(data, key, split, batch_size):
        tokens = data[split]
        starts = jax.random.randint(key, (batch_size,), 0, tokens.shape[0] - seq_len - 1)
        return jax.vmap(lambda s: jax.lax.dynamic_slice(tokens, (s,), (seq_len + 1,)))(starts)

    def loss(params, key, batch):
        logits = net.apply(params, batch[:, :-1])
        targets = batch[:, 1:]
        accuracy = jnp.mean(jnp.argmax(logits, -1) == targets)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        return jnp.mean(ce), {"accuracy": accuracy}

    example = jnp.zeros((1, seq_len), jnp.int32)
    return Task(
        name=name,
        init=lambda key: net.init(key, example),
        loss=loss,
        sampler=sampler,
        data=data,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
    )


SHAKESPEARE_SOURCES = {"full": load_tiny_shakespeare, "excerpt": load_shakespeare_excerpt}


def shakespeare_char_lm(
    name: str,
    source: str,
    seq_len: int = 64,
    batch_size: int = 32,
    embed_dim: int = 32,
    hidden: int = 128,
) -> Task:
    """A character LSTM on Tiny Shakespeare, `source` "full" (data folder) or "excerpt" (the
    bundled first 200k characters); a 90/5/5 contiguous split of the text."""
    tokens, vocab = networks.lookup(SHAKESPEARE_SOURCES, source, "Shakespeare source")()
    return char_lm_task(
        name,
        split_stream(tokens, 0.05, 0.05),
        len(vocab),
        seq_len=seq_len,
        batch_size=batch_size,
        embed_dim=embed_dim,
        hidden=hidden,
    )
