"""kerasssl.errors: the user's errors, and the one helper that makes a message one line."""

import pytest

from kerasssl.errors import DataError, first_line


def test_first_line_of_plain_and_empty_exceptions():
    assert first_line(ValueError("bad header\n  at offset 8")) == "bad header"
    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(OSError("x" * 300)) == "x" * 200
    assert first_line(DataError("a.npy", "empty file")) == "a.npy: empty file"


def test_first_line_drops_tensorflow_decorations():
    tf = pytest.importorskip("tensorflow")
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        tf.debugging.assert_equal(tf.constant(1), tf.constant(2), message="image bytes do not match")
    line = first_line(info.value)
    assert line.startswith("image bytes do not match") and "[Op:" not in line and "\n" not in line
    error = tf.errors.DataLossError(None, None, "{{function_node __inference_f_12}} corrupted record at 40 [Op:IteratorGetNext] name: x")
    assert first_line(error) == "corrupted record at 40"
