"""Character LM batches are windows of the token stream; targets are inputs shifted by one."""

import jax
import numpy as np
import pytest

from tasks import DatasetError
from tasks.language import char_lm_task, split_stream


def test_split_stream_is_contiguous_and_complete():
    tokens = np.arange(100)
    parts = split_stream(tokens, 0.1, 0.2)
    np.testing.assert_array_equal(
        np.concatenate([parts[s] for s in ("train", "valid", "test")]), tokens
    )
    assert len(parts["valid"]) == 10 and len(parts["test"]) == 20


def test_windows_come_from_the_stream():
    stream = np.arange(500) % 37
    task = char_lm_task("toy", split_stream(stream, 0.2, 0.2), 37, seq_len=9, batch_size=4)
    batch = np.asarray(task.sample_batch(jax.random.key(0)))
    assert batch.shape == (4, 10)
    np.testing.assert_array_equal((batch[:, 1:] - batch[:, :-1]) % 37, 1)
    loss, aux = task.loss(task.init(jax.random.key(0)), None, batch)
    assert float(loss) == pytest.approx(np.log(37), rel=0.05)  # near-uniform at init
    with pytest.raises(ValueError, match="tokens"):
        char_lm_task("tiny", {"train": stream, "valid": stream[:5], "test": stream}, 37, seq_len=9)


def test_shakespeare_vocabulary():
    from tasks import get_task

    try:
        task = get_task("shakespeare_lm", seq_len=16, batch_size=2)
    except DatasetError:
        pytest.skip("tiny shakespeare is not available here")
    assert int(task.sample_batch(jax.random.key(0)).max()) < 65
