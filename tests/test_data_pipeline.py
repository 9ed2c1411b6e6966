"""kerasssl.data.pipeline.make_dataset: epochs, shuffling, labels stay with their images."""

import numpy as np
import pytest
import tensorflow as tf

from kerasssl.data.pipeline import make_dataset, seeded_order
from kerasssl.errors import KerassslError


def indexed_images(n, size=3, channels=2):
    """Image i is filled with the value i, so a batch tells which rows it holds."""
    return np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones(
        (1, size, size, channels), np.float32)


def rows(batch_images):
    return batch_images.numpy()[:, 0, 0, 0].astype(int).tolist()


def test_one_epoch_is_a_permutation_and_labels_follow_images():
    images = indexed_images(23)
    labels = np.arange(23) % 3
    ds = make_dataset(images, labels, batch_size=5, seed=0)
    seen = []
    for x, y in ds:
        assert x.dtype == tf.float32 and y.dtype == tf.int64
        np.testing.assert_array_equal(y.numpy(), labels[rows(x)])
        seen += rows(x)
    assert sorted(seen) == list(range(23)) and seen != list(range(23))
    assert [len(rows(x)) for x, _ in ds][-1] == 3  # partial last batch kept


def test_seeded_reshuffle_each_epoch_and_no_shuffle_keeps_order():
    images = indexed_images(40)
    ds = make_dataset(images, batch_size=40, seed=3)
    epoch1, epoch2 = [rows(b) for b in ds], [rows(b) for b in ds]
    assert epoch1 != epoch2  # reshuffled each epoch
    again = make_dataset(images, batch_size=40, seed=3)
    assert [rows(b) for b in again] == epoch1  # same seed, same order
    assert [rows(b) for b in make_dataset(images, batch_size=40, seed=4)] != epoch1
    ordered = make_dataset(images, batch_size=16, shuffle=False)
    assert sum((rows(b) for b in ordered), []) == list(range(40))


def test_repeat_gives_full_batches_and_whole_epochs():
    images = indexed_images(10)
    ds = make_dataset(images, batch_size=4, seed=1, repeat=True)
    batches = [rows(b) for b in ds.take(5)]
    assert all(len(b) == 4 for b in batches)
    flat = sum(batches, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))


def test_an_endless_stream_is_the_same_from_every_iterator():
    # Keras's fit under a tf.distribute strategy can make an extra iterator before
    # training; with reshuffle_each_iteration the batches then changed from run to run.
    ds = make_dataset(indexed_images(10), batch_size=4, seed=1, repeat=True, drop_remainder=True)
    first = [rows(b) for b in ds.take(6)]
    assert [rows(b) for b in ds.take(6)] == first
    assert sorted(sum(first, [])[:10]) == list(range(10))


def test_seeded_order_passes_are_permutations_set_by_seed_and_pass_alone():
    order = seeded_order(7, seed=5)
    values = [int(i) for i in order.take(21)]
    passes = [values[k:k + 7] for k in (0, 7, 14)]
    assert all(sorted(p) == list(range(7)) for p in passes)
    assert len({tuple(p) for p in passes}) == 3  # each pass its own order
    assert [int(i) for i in order.take(21)] == values  # a second iterator: the same
    assert [int(i) for i in seeded_order(7, seed=5).take(21)] == values
    assert [int(i) for i in seeded_order(7, seed=6).take(21)] != values
    assert [int(i) for i in seeded_order(1, seed=0).take(3)] == [0, 0, 0]


def test_drop_remainder_gives_a_static_batch_size():
    ds = make_dataset(indexed_images(10), batch_size=4, drop_remainder=True, shuffle=False)
    assert ds.element_spec.shape.as_list() == [4, 3, 3, 2]
    assert len(list(ds)) == 2


def test_dataset_input_is_cached_shuffled_and_batched():
    images = indexed_images(12).astype(np.float64)
    source = tf.data.Dataset.from_tensor_slices((images, np.arange(12, dtype=np.int32)))
    ds = make_dataset(source, batch_size=5, seed=0, cache=True)
    got = []
    for x, y in ds:
        assert x.dtype == tf.float32 and y.dtype == tf.int64
        assert rows(x) == y.numpy().tolist()
        got += rows(x)
    assert sorted(got) == list(range(12))


def test_bad_arguments_are_user_errors():
    with pytest.raises(KerassslError, match="3 labels for 4 images"):
        make_dataset(indexed_images(4), np.zeros(3), batch_size=2)
    with pytest.raises(KerassslError, match="batch size"):
        make_dataset(indexed_images(4), batch_size=0)
    with pytest.raises(KerassslError, match=r"\(N, H, W, C\)"):
        make_dataset(np.zeros((4, 3, 3)), batch_size=2)
