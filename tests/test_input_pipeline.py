"""Loading tfds splits: shapes, dtype, range, and clear errors for missing data."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.helpers import real_mnist_dir, requires_real_mnist
from vae_jax.data import input_pipeline


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mock_split_shapes_dtype_and_range(tmp_path, name):
    with tfds.testing.mock_data(num_examples=37):
        images, labels = input_pipeline.load_split(name, "train", str(tmp_path))
    assert images.shape == (37, 28, 28, 1) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.5
    assert labels.shape == (37,) and labels.dtype == np.int32


def test_missing_dataset_without_download_names_the_data_dir(tmp_path):
    with pytest.raises(input_pipeline.DatasetError,
                       match=f"'fashion_mnist' is not prepared in {tmp_path}"):
        input_pipeline.load_split("fashion_mnist", "test", str(tmp_path), download=False)


def test_unknown_dataset():
    with pytest.raises(input_pipeline.DatasetError, match="unknown tfds dataset 'no_such_set'"):
        input_pipeline.load_split("no_such_set", "train", download=False)


def test_dataset_with_other_image_shape_is_refused(tmp_path):
    with pytest.raises(input_pipeline.DatasetError, match=r"cifar10.*\(32, 32, 3\)"):
        input_pipeline.load_split("cifar10", "train", str(tmp_path), download=False)


def test_data_dir_flag_beats_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", "/somewhere/else")
    assert input_pipeline.resolve_data_dir(str(tmp_path)) == str(tmp_path)
    assert input_pipeline.resolve_data_dir(None) == "/somewhere/else"


def test_batches_cover_every_example_once():
    slices = input_pipeline.batch_slices(60_000, 1024)
    assert len(slices) == 59 and slices[-1].stop - slices[-1].start == 608
    covered = np.concatenate([np.arange(s.start, s.stop) for s in slices])
    np.testing.assert_array_equal(covered, np.arange(60_000))


@pytest.mark.slow(reason="real MNIST")
@requires_real_mnist
def test_real_mnist_from_the_data_dir():
    images, labels = input_pipeline.load_split("mnist", "train", real_mnist_dir(),
                                               download=False)
    assert images.shape == (60_000, 28, 28, 1)
    np.testing.assert_allclose(images.mean() * 255, 33.32, atol=0.01)
    assert sorted(np.unique(labels)) == list(range(10))
