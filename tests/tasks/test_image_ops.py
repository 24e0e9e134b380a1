"""Image preprocessing: area resize, bilinear fallback, ITU-R 601 grey, channel statistics."""

import numpy as np
import pytest

from tasks import image_ops


def test_resize_area_average_by_hand():
    x = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    out = image_ops.resize(x, 2)
    # Blocks {0,1,4,5}, {2,3,6,7}, {8,9,12,13}, {10,11,14,15}.
    expected = np.array([[2.5, 4.5], [10.5, 12.5]], np.float32).reshape(1, 2, 2, 1)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_resize_area_matches_loop():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(3, 28, 28, 2), dtype=np.uint8)
    out = image_ops.resize(x, (7, 14))
    ref = np.zeros((3, 7, 14, 2))
    for i in range(7):
        for j in range(14):
            ref[:, i, j] = x[:, 4 * i : 4 * i + 4, 2 * j : 2 * j + 2].mean(axis=(1, 2))
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_resize_bilinear_when_size_does_not_divide():
    x = np.full((2, 28, 28, 3), 7, np.uint8)
    out = image_ops.resize(x, 10)
    assert out.shape == (2, 10, 10, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 7.0, rtol=1e-6)
    ramp = np.tile(np.arange(4, dtype=np.float32), (4, 1)).reshape(1, 4, 4, 1)
    up = image_ops.resize(ramp, 7)[0, 3, :, 0]
    assert np.all(np.diff(up) >= 0) and up[0] >= 0.0 and up[-1] <= 3.0


def test_resize_same_size_and_errors():
    x = np.ones((1, 5, 5, 1), np.uint8)
    np.testing.assert_array_equal(image_ops.resize(x, 5), x.astype(np.float32))
    with pytest.raises(ValueError, match="N x H x W x C"):
        image_ops.resize(np.ones((5, 5)), 2)
    with pytest.raises(ValueError, match="positive"):
        image_ops.resize(x, 0)


def test_grey_of_primaries():
    rgb = np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3)
    grey = image_ops.to_grey(rgb)
    assert grey.shape == (1, 1, 3, 1) and grey.dtype == np.float32
    np.testing.assert_allclose(grey[0, 0, :, 0], [0.299, 0.587, 0.114], rtol=1e-6)
    assert grey[0, 0, 0, 0] == pytest.approx(0.299)
    white = np.full((1, 1, 1, 3), 255, np.uint8)
    assert image_ops.to_grey(white)[0, 0, 0, 0] == pytest.approx(255.0, rel=1e-6)


def test_grey_keeps_one_channel_and_rejects_others():
    x = np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(image_ops.to_grey(x), x.astype(np.float32))
    with pytest.raises(ValueError, match="channels"):
        image_ops.to_grey(np.zeros((1, 2, 2, 2)))


def test_to_unit():
    x = np.array([0, 51, 255], np.uint8).reshape(1, 1, 3, 1)
    np.testing.assert_allclose(image_ops.to_unit(x).ravel(), [0.0, 0.2, 1.0], rtol=1e-6)
    assert image_ops.to_unit(np.ones(2, np.float64)).dtype == np.float32


def test_channel_stats_and_standardize():
    x = np.zeros((2, 2, 2, 2), np.uint8)
    x[..., 0] = [[[0, 2], [0, 2]], [[0, 2], [0, 2]]]
    x[..., 1] = 5
    mean, std = image_ops.channel_stats(x)
    assert mean.dtype == np.float32 and std.dtype == np.float32
    np.testing.assert_allclose(mean, [1.0, 5.0])
    np.testing.assert_allclose(std, [1.0, 0.0], atol=1e-5)
    z = image_ops.standardize(x, mean, std)
    assert z.dtype == np.float32 and np.all(np.isfinite(z))
    np.testing.assert_allclose(z[..., 0].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(z[..., 0].std(), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(z[..., 1], 0.0)


def test_standardize_uses_training_statistics():
    rng = np.random.default_rng(1)
    train = rng.normal(3.0, 2.0, size=(500, 4, 4, 3)).astype(np.float32)
    test = train[:10] + 1.0
    mean, std = image_ops.channel_stats(train)
    z = image_ops.standardize(test, mean, std)
    np.testing.assert_allclose(z, (test - mean) / std, rtol=1e-5)
