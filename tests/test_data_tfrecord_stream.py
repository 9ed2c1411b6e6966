"""kerasssl.data.tfrecord.stream: a streaming tf.data pipeline over shards."""

import numpy as np

from kerasssl.data import tfrecord


def test_make_tfrecord_dataset_streams_all_or_a_subset(three_band_folder, tmp_path):
    out = tmp_path / "rec"
    tfrecord.write_tfrecords(three_band_folder, out, shards=3, progress=False)
    data = tfrecord.load_tfrecords(out)
    by_name = dict(zip(data.files, range(len(data.files))))

    def epoch(**kwargs):
        ds = tfrecord.make_tfrecord_dataset(str(out / "*.tfrecord*"), 8, **kwargs)
        xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
        return np.concatenate(xs), np.concatenate(ys)

    images, labels = epoch(shuffle=False)
    np.testing.assert_array_equal(images, data.images)
    np.testing.assert_array_equal(labels, data.labels)

    # A split's files, cropped, shuffled with a seed: the same order on every run.
    keep = data.files[5:30]
    a, la = epoch(files=keep, image_size=16, shuffle=True, seed=3)
    b, lb = epoch(files=keep, image_size=16, shuffle=True, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    want = data.images[[by_name[f] for f in keep]][:, 8:24, 8:24]
    want_labels = data.labels[[by_name[f] for f in keep]]
    assert not np.array_equal(a, want)  # shuffled ...
    rows = [next(i for i, w in enumerate(want) if np.array_equal(w, x)) for x in a]
    assert sorted(rows) == list(range(len(keep)))  # ... a permutation of exactly those files
    np.testing.assert_array_equal(la, want_labels[rows])
