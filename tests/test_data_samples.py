"""kerasssl.data.samples: which images of a run check an export (train for calibration, val for parity)."""

import numpy as np
import pytest

from kerasssl.data import samples as samples_lib
from kerasssl.data.samples import SampleData
from kerasssl.errors import DataError

SIZE = 16


def test_int8_calibration_uses_train_images_only(tmp_path, monkeypatch):
    from conftest import write_hst_folder
    from kerasssl.data.load import load_images
    from kerasssl.data.split import make_split

    folder = write_hst_folder(tmp_path / "data", 30, 20, size=SIZE, seed=5)
    data = load_images(folder)
    run = tmp_path / "run"
    run.mkdir()
    split = make_split(data, val_fraction=0.2, test_fraction=0.2, seed=0)
    split.save(run / "split.json")
    key = lambda image: image.tobytes()
    train = {key(data.images[i]) for i in split.indices(data, "train")}
    held_out = {key(data.images[i]) for name in ("val", "test") for i in split.indices(data, name)}
    # fewer calibration images than train images: a subset, still only train images
    monkeypatch.setattr(samples_lib, "MAX_REPRESENTATIVE", 8)
    samples = SampleData.gather((SIZE, SIZE, 1), data=folder, run_dir=run)
    chosen = [key(image) for image in samples.representative]
    assert len(chosen) == 8 == len(set(chosen))
    assert set(chosen) <= train and not set(chosen) & held_out
    # spread over the split, not its first rows (the split lists one class after the other)
    assert set(data.labels[[i for i in split.indices(data, "train") if key(data.images[i]) in set(chosen)]]) == {0, 1}
    assert samples.representative_source == f"train split of {run}"


@pytest.fixture
def run_with_split(tmp_path):
    from conftest import write_hst_folder
    from kerasssl.data.load import load_images
    from kerasssl.data.split import make_split

    folder = write_hst_folder(tmp_path / "data", 20, 20, size=SIZE, nan_files=4, seed=1)
    data = load_images(folder)
    run = tmp_path / "run"
    run.mkdir()
    split = make_split(data, val_fraction=0.25, test_fraction=0.25, seed=0)
    split.save(run / "split.json")
    return folder, data, run, split


def test_parity_and_auc_images_are_the_val_split(run_with_split):
    folder, data, run, split = run_with_split
    samples = SampleData.gather((SIZE, SIZE, 1), data=folder, run_dir=run)
    val = split.indices(data, "val")
    np.testing.assert_array_equal(samples.val_images, data.images[val])
    np.testing.assert_array_equal(samples.val_labels, data.labels[val])
    # the val images, then NaN variants of the first four (parity covers the in-graph repair)
    np.testing.assert_array_equal(samples.parity_images[:len(val)], data.images[val])
    assert len(samples.parity_images) == len(val) + 4
    assert all(np.isnan(image).sum() >= 3 for image in samples.parity_images[len(val):])
    assert samples.source == f"{folder} (val split of {run})"


def test_without_a_split_all_of_data_serves_and_says_so(run_with_split, tmp_path):
    folder, data, _, _ = run_with_split
    samples = SampleData.gather((SIZE, SIZE, 1), data=folder, run_dir=tmp_path / "no_run")
    assert samples.val_images is None and len(samples.representative) == len(data)
    np.testing.assert_array_equal(samples.representative, data.images)
    assert samples.source == f"{folder} (no run split)"
    assert "not restricted to training images" in samples.representative_source


def test_sample_inputs_or_synthetic_images_without_data():
    rng = np.random.default_rng(0)
    given = rng.normal(size=(70, SIZE, SIZE, 1)).astype(np.float32)
    samples = SampleData.gather((SIZE, SIZE, 1), sample_inputs=given)
    assert len(samples.parity_images) == samples_lib.MAX_PARITY + 4
    np.testing.assert_array_equal(samples.representative, given)
    assert samples.source == samples.representative_source == "sample inputs"
    synthetic = SampleData.gather((SIZE, SIZE, 3))
    assert synthetic.source == "synthetic" and synthetic.representative is None
    assert synthetic.parity_images.shape == (16, SIZE, SIZE, 3)
    assert np.isnan(synthetic.parity_images).any()  # raw-looking: NaN pixels included


def test_images_that_do_not_fit_the_model_are_one_data_error(run_with_split):
    folder = run_with_split[0]
    with pytest.raises(DataError, match=r"sample inputs: images of shape \[8, 8, 1\] do not fit "
                                        r"the model input \[16, 16, 1\]"):
        SampleData.gather((SIZE, SIZE, 1), sample_inputs=np.zeros((2, 8, 8, 1)))
    with pytest.raises(DataError, match="sample inputs: no images"):
        SampleData.gather((SIZE, SIZE, 1), sample_inputs=np.zeros((0, SIZE, SIZE, 1)))
    with pytest.raises(DataError, match="do not fit the model input"):
        SampleData.gather((SIZE, SIZE, 3), data=folder)
