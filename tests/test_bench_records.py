"""Tests for benchmarks/bench_records.py: both writers, same record; the bytes they write."""

import re

import numpy as np

from benchmarks import bench_records


def test_both_writers_leave_the_same_record_and_only_the_old_one_grows_quadratically(tmp_path):
    rows, epochs = 400, 12
    old_bytes = bench_records.whole_rewrite(tmp_path / "old.npz", rows, epochs)
    new_bytes = bench_records.epoch_files(tmp_path / "new.npz", rows, epochs)
    old, new = np.load(tmp_path / "old.npz"), np.load(tmp_path / "new.npz")
    assert sorted(old.files) == sorted(new.files)
    for name in old.files:
        np.testing.assert_array_equal(new[name], old[name], err_msg=name)
    epoch_bytes = rows * (4 + 1 + 2)
    # Whole rewrites: sum over e of e epochs = E(E+1)/2 epochs; epoch files: E, then E again.
    assert old_bytes > epochs * (epochs + 1) / 2 * epoch_bytes
    assert new_bytes < 2 * epochs * epoch_bytes + 20_000  # npz headers: ~1 KB per file.


def test_main_prints_the_table_and_the_ratio(capsys):
    bench_records.main(["--rows=200", "--epochs=3", "--repeats=1"])
    out = capsys.readouterr().out
    assert "whole rewrite" in out and "epoch files" in out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"ratio epoch files vs whole rewrite: \d+\.\d\d", last), last
