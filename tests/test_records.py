"""Tests for records.py: atomic writes and training records that grow an epoch at a time."""

import json

import numpy as np
import pytest

from robust_losses_jax import records


def _epoch(e: int, n: int = 5, p_t: bool = True) -> dict[str, np.ndarray]:
    rows = {
        "margin_sum": np.arange(n, dtype=np.float32) + 10 * e,
        "margin_count": np.full(n, e % 3, np.uint8),
    }
    if p_t:
        rows["p_t"] = (np.arange(n) / n + e / 100).astype(np.float16)
    return rows


def test_epochs_are_read_back_in_order_and_cut_at_the_asked_count(tmp_path):
    path = tmp_path / "train_record.npz"
    for e in range(4):
        records.write_epoch(path, e, _epoch(e))
    history = records.read_history(path, 3)
    assert [len(v) for v in history.values()] == [3, 3, 3]
    for e in range(3):
        for name, value in _epoch(e).items():
            np.testing.assert_array_equal(history[name][e], value)
    assert len(records.read_history(path, 10)["margin_sum"]) == 4
    assert not path.exists()  # Nothing gathered until write_history.


def test_write_history_gathers_the_epochs_and_removes_their_files(tmp_path):
    path = tmp_path / "train_record_aum0.npz"
    history = {name: [] for name in records.HISTORY_FIELDS}
    for e in range(3):
        rows = _epoch(e, p_t=False)
        records.write_epoch(path, e, rows)
        for name, value in rows.items():
            history[name].append(value)
    records.write_history(path, history, num_rows=5)
    assert not records.epochs_dir(path).exists()
    assert records.epochs_dir(path).name == "train_record_aum0.epochs"
    with np.load(path) as saved:
        assert saved["margin_sum_history"].shape == (3, 5)
        assert saved["margin_count_history"].dtype == np.uint8
        assert saved["p_t_history"].shape == (0, 5)  # Not tracked: empty, not missing.
        np.testing.assert_array_equal(saved["margin_sum_history"][2], _epoch(2)["margin_sum"])


def test_a_resumed_record_reads_the_gathered_epochs_then_the_new_files(tmp_path):
    path = tmp_path / "train_record.npz"
    first = {name: [v[name] for v in map(_epoch, range(2))] for name in records.HISTORY_FIELDS}
    records.write_history(path, first, num_rows=5)  # A finished 2-epoch run...
    for e in (2, 3):  # ...resumed for more epochs.
        records.write_epoch(path, e, _epoch(e))
    history = records.read_history(path, 4)
    for e in range(4):
        np.testing.assert_array_equal(history["p_t"][e], _epoch(e)["p_t"])
    # A missing epoch ends the history: the caller sees fewer epochs than its checkpoint's.
    (records.epochs_dir(path) / "000002.npz").unlink()
    assert len(records.read_history(path, 4)["margin_sum"]) == 2


def test_an_epoch_trained_again_is_read_from_its_file_not_the_gathered_record(tmp_path):
    # A finished 2-epoch run resumed from an earlier checkpoint (its latest deleted) trains
    # epoch 1 again: the new epoch file, not the gathered record's row, is that epoch now.
    path = tmp_path / "train_record.npz"
    first = {name: [v[name] for v in map(_epoch, range(2))] for name in records.HISTORY_FIELDS}
    records.write_history(path, first, num_rows=5)
    records.write_epoch(path, 1, _epoch(9))
    history = records.read_history(path, 2)
    np.testing.assert_array_equal(history["margin_sum"][0], _epoch(0)["margin_sum"])
    for name in records.HISTORY_FIELDS:
        np.testing.assert_array_equal(history[name][1], _epoch(9)[name], err_msg=name)


def test_an_epoch_file_costs_its_own_size_whatever_the_history(tmp_path):
    # The point of the epoch files: writing epoch 50 writes one epoch, not 51 (the record was
    # rewritten whole every epoch before: O(epochs^2) bytes over a run).
    path = tmp_path / "train_record.npz"
    sizes = []
    for e in range(51):
        records.write_epoch(path, e, _epoch(e, n=1000))
        sizes.append((records.epochs_dir(path) / f"{e:06d}.npz").stat().st_size)
    assert max(sizes) == min(sizes)
    assert sorted(p.name for p in records.epochs_dir(path).iterdir())[-1] == "000050.npz"


def test_rewriting_an_epoch_replaces_it(tmp_path):
    path = tmp_path / "train_record.npz"
    records.write_epoch(path, 0, _epoch(0))
    records.write_epoch(path, 0, _epoch(7))  # Trained again after a resume.
    np.testing.assert_array_equal(
        records.read_history(path, 1)["margin_sum"][0], _epoch(7)["margin_sum"]
    )


@pytest.mark.parametrize(
    "epoch,rows,message",
    [(0, {"loss": np.zeros(3)}, "unknown record fields ['loss']"), (-1, {}, "epoch -1")],
)
def test_bad_epochs_are_refused_by_name(tmp_path, epoch, rows, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        records.write_epoch(tmp_path / "r.npz", epoch, rows)
    assert not records.epochs_dir(tmp_path / "r.npz").exists()


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "out.json"
    records.write_json(path, {"a": 1})

    def fail(f):
        f.write("{half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        records.atomic_write(path, fail)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # No temporary left.
    records.append_jsonl(tmp_path / "m.jsonl", {"epoch": 1})
    records.append_jsonl(tmp_path / "m.jsonl", {"epoch": 2})
    assert [json.loads(x)["epoch"] for x in (tmp_path / "m.jsonl").read_text().splitlines()] == [
        1,
        2,
    ]


def test_written_files_are_strict_json_and_get_the_usual_mode(tmp_path):
    import json
    import os
    import stat

    import numpy as np

    from robust_losses_jax import records

    path = tmp_path / "out.json"
    records.write_json(path, {"f1": float("nan"), "auroc": np.float32(0.5), "rates": [np.inf, 1.0]})
    assert json.loads(path.read_text()) == {"auroc": 0.5, "f1": None, "rates": [None, 1.0]}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # Not mkstemp's 0600.
