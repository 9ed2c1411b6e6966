"""kerasssl.data.folders: what a data folder holds (layouts, classes, files), no pixels read."""

import logging

import pytest

from conftest import write_class_folders
from kerasssl.data.folders import scan
from kerasssl.data.load import load_images


@pytest.mark.parametrize("names", [("lenses", "nonlenses"), ("lens", "non_lens"),
                                   ("train_lenses", "train_nonlenses"), ("Lenses", "NonLenses")])
def test_binary_lens_folders_put_the_non_lens_class_first(tmp_path, names):
    pos, neg = names
    root = write_class_folders(tmp_path / "b", {pos: 1, neg: 1}, size=8)
    assert scan(root).class_names == [neg, pos]


def test_unknown_files_are_skipped_with_a_warning(hst_folder, caplog):
    (hst_folder / "notes.txt").write_text("a,b\n")
    (hst_folder / "metadata.csv").write_text("a,b\n")  # the simulator's sidecar: expected
    (hst_folder / ".hidden.npy").write_bytes(b"")  # hidden files are ignored silently
    with caplog.at_level(logging.WARNING, logger="kerasssl.data.folders"):
        data = load_images(hst_folder)
    assert len(data) == 36
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 1 entry that is not" in warnings[0]
    assert "notes.txt" in warnings[0] and "metadata.csv" not in warnings[0]


def test_scan_lists_without_reading_pixels(hst_folder):
    (hst_folder / "nl_99_hst.npy").write_bytes(b"corrupt")  # scan must not open it
    listing = scan(hst_folder)
    assert listing.format == "hst" and listing.class_names == ["nonlens", "lens"]
    assert ("nl_99_hst.npy", 0) in listing.entries
    assert listing.entries == scan(hst_folder).entries  # deterministic
    assert [label for _, label in listing.entries] == sorted(label for _, label in listing.entries)
    assert listing.paths()[0].parent == hst_folder
