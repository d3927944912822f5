"""experiments.find_errors end to end on each kind of input, --pred-probs, resume after a kill,
bad input; and the runner on labels with nothing injected."""

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from robust_losses_jax import audit, input_pipeline
from robust_losses_jax.commands import find_errors, run

FAST = ["--model=mlp", "--batch-size=64", "--eval-batch-size=256", "--no-progress",
        "--checkpoint-min-interval=0"]  # fmt: skip


def strict_json(path):
    """The file parsed as strict JSON: NaN or Infinity anywhere fails."""

    def refuse(name):
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """The digits with 75 training labels flipped, as an npz with a test split."""
    train = input_pipeline.load_split("sklearn_digits", "train")
    test = input_pipeline.load_split("sklearn_digits", "test")
    labels = train.labels.copy()
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(labels), 75, replace=False)
    labels[flipped] = (labels[flipped] + rng.integers(1, 10, 75)) % 10
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, train_images=train.images[..., 0], train_labels=labels,
             test_images=test.images, test_labels=test.labels,
             class_names=np.array([f"digit{k}" for k in range(10)]))  # fmt: skip
    return path, flipped


def read_csv(workdir):
    with open(workdir / "label_issues.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_npz_audit_writes_every_output_and_finds_the_planted_errors(tmp_path, digits_npz, capsys):
    path, flipped = digits_npz
    workdir = tmp_path / "audit"
    code = find_errors.main([f"--dataset=npz:{path}", f"--workdir={workdir}", *FAST])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3 and "labels flagged" in out[0]
    assert out[1].startswith("most flagged (given -> suggested): digit")
    assert out[2].startswith("fit: accuracy on the given labels 0.") and "(test split)" in out[2]
    assert out[2].endswith("trained 0 epoch(s) of cross-entropy, 10 of gce")
    rows = read_csv(workdir)
    assert len(rows) == 1500 and [int(r["rank"]) for r in rows] == list(range(1500))
    quality = [float(r["label_score"]) for r in rows]
    assert quality == sorted(quality)
    assert len(set(quality[:50])) == 50  # No ties at the top.
    assert rows[0]["given_name"].startswith("digit")
    assert {r["is_label_issue"] for r in rows} == {"True", "False"}
    flagged = {int(r["index"]) for r in rows if r["is_label_issue"] == "True"}
    hits = len(flagged & set(flipped.tolist()))
    assert hits / len(flagged) > 0.8 and hits / 75 > 0.8, (hits, len(flagged))
    probs = np.load(workdir / "pred_probs.npy")
    assert probs.shape == (1500, 10)
    # The in-sample detector flags where its model predicts another class.
    given = np.array([int(r["given_label"]) for r in sorted(rows, key=lambda r: int(r["index"]))])
    assert flagged == set(np.flatnonzero(probs.argmax(1) != given).tolist())
    summary = strict_json(workdir / "summary.json")
    assert summary["examples"] == 1500 and summary["num_label_issues"] == len(flagged)
    assert summary["warnings"] == [] and summary["fit"]["heldout_source"] == "test split"
    assert set(summary["estimated_noise_rate_per_class"]) == {f"digit{k}" for k in range(10)}
    assert 0.8 < summary["test_accuracy"] <= 1.0
    assert summary["settings"]["loss"] == "gce" and summary["settings"]["detector"] == "pt"
    assert summary["settings"]["noise_rate"] == 0.0 and summary["settings"]["train_size"] is None
    assert (workdir / "label_issues.png").stat().st_size > 10_000
    # The noise matrix: cleanlab's estimate on the probabilities and labels written.
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities

    with open(workdir / "noise_matrix.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == ["given \\ true", *(f"digit{k}" for k in range(10))]
    assert [row[0] for row in table[1:]] == [f"digit{k}" for k in range(10)]
    matrix = np.array([[float(x) for x in row[1:]] for row in table[1:]])
    want = estimate_py_and_noise_matrices_from_probabilities(given, probs)[1]
    np.testing.assert_allclose(matrix, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(matrix.sum(axis=0), 1.0, atol=1e-5)
    assert (workdir / "noise_matrix.png").stat().st_size > 10_000
    pairs = summary["confused_pairs"]
    assert 1 <= len(pairs) <= 5 and [p["count"] for p in pairs] == sorted(
        (p["count"] for p in pairs), reverse=True
    )
    top = pairs[0]
    shown = f"{top['given']} -> {top['suggested']} {top['count']}"
    assert out[1].split(": ", 1)[1].startswith(shown)
    strict_json(workdir / "config.json")
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"metrics.jsonl holds {c}"))


@pytest.mark.slow
def test_without_a_test_split_a_tenth_is_held_out_and_still_audited(tmp_path, capsys):
    train = input_pipeline.load_split("sklearn_digits", "train")
    path = tmp_path / "no_test.npz"
    np.savez(path, train_images=train.images[..., 0], train_labels=train.labels)
    workdir = tmp_path / "audit"
    assert find_errors.main([f"--dataset=npz:{path}", f"--workdir={workdir}", "--epochs=4",
                             *FAST]) == 0  # fmt: skip
    fit_line = capsys.readouterr().out.strip().splitlines()[2]
    assert "held out (slice of the given labels)" in fit_line
    rows = read_csv(workdir)
    assert len(rows) == 1500 and sum(r["held_out"] == "True" for r in rows) == 150
    summary = strict_json(workdir / "summary.json")
    assert summary["run"]["heldout_examples"] == 150
    held = {int(r["index"]) for r in rows if r["held_out"] == "True"}
    agree = np.mean([r["given_label"] == r["predicted_label"] for r in rows
                     if int(r["index"]) in held])  # fmt: skip
    assert summary["fit"]["heldout_accuracy"] == pytest.approx(agree)
    # The same seed holds out the same slice.
    again = tmp_path / "again"
    assert find_errors.main([f"--dataset=npz:{path}", f"--workdir={again}", "--epochs=4",
                             *FAST]) == 0  # fmt: skip
    assert {int(r["index"]) for r in read_csv(again) if r["held_out"] == "True"} == held


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["drop", "relabel"])
def test_retrain_compares_all_labels_with_the_cleaned_set(tmp_path, digits_npz, capsys, mode):
    path, _ = digits_npz
    workdir = tmp_path / "audit"
    assert find_errors.main([f"--dataset=npz:{path}", f"--workdir={workdir}", "--epochs=4",
                             "--retrain", f"--retrain-mode={mode}", *FAST]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "retrain (ce): test accuracy 0." in out and "on the test split of 297 examples" in out
    summary = strict_json(workdir / "summary.json")
    retrained = summary["retrain"]
    rows = sorted(read_csv(workdir), key=lambda r: int(r["index"]))
    flagged = np.array([r["is_label_issue"] == "True" for r in rows])
    with np.load(workdir / "cleaned.npz") as cleaned:
        keep, labels, relabelled = cleaned["keep"], cleaned["labels"], cleaned["relabelled"]
    assert retrained["removed"] == int((~keep).sum()) and retrained["mode"] == mode
    assert retrained["relabelled"] == int(relabelled.sum())
    given = np.array([int(r["given_label"]) for r in rows])
    suggested = np.array([int(r["predicted_label"]) for r in rows])
    np.testing.assert_array_equal(labels, np.where(relabelled, suggested, given))
    if mode == "drop":
        np.testing.assert_array_equal(keep, ~flagged)
    else:
        assert relabelled.sum() > 0 and np.all(flagged[relabelled])
        np.testing.assert_array_equal(keep, ~flagged | relabelled)
    for name in ("baseline_ce", "cleaned_ce"):  # Each retrained model's own run.
        run_summary = strict_json(workdir / "retrain" / name / "summary.json")
        assert run_summary["num_train"] == (1500 if name == "baseline_ce" else int(keep.sum()))
    assert retrained["cleaned_test_accuracy"] == retrained["by_loss"]["ce"]["cleaned_test_accuracy"]
    assert 0.5 < retrained["baseline_test_accuracy"] <= 1.0


def _digits_features(tmp_path, **extra):
    """sklearn's digits as float features, 10% of the labels moved to another class."""
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(labels), len(labels) // 10, replace=False)
    given = labels.copy()
    given[flipped] = (given[flipped] + rng.integers(1, 10, len(flipped))) % 10
    path = tmp_path / "features.npz"
    np.savez(path, train_features=features.astype(np.float32), train_labels=given, **extra)
    return path, flipped


def test_a_features_npz_audits_end_to_end(tmp_path, capsys):
    path, flipped = _digits_features(tmp_path)
    workdir = tmp_path / "audit"
    assert find_errors.main([f"--dataset=npz:{path}", f"--workdir={workdir}"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "of 1797 labels flagged" in out[0] and out[1].startswith("most flagged")
    assert "(slice of the given labels); trained 0 epoch(s) of cross-entropy, 30 of gce" in out[2]
    rows = read_csv(workdir)
    assert list(rows[0]) == [*audit.CSV_COLUMNS, "held_out"] and len(rows) == 1797
    flagged = {int(r["index"]) for r in rows if r["is_label_issue"] == "True"}
    hits = len(flagged & set(flipped.tolist()))
    precision, recall = hits / len(flagged), hits / len(flipped)
    assert 2 * precision * recall / (precision + recall) > 0.9, (precision, recall)
    summary = strict_json(workdir / "summary.json")
    assert summary["settings"]["model"] == "mlp" and summary["settings"]["epochs"] == 30
    assert summary["fit"]["heldout_source"] == "slice of the given labels"
    for name in ("pred_probs.npy", "noise_matrix.csv", "noise_matrix.png"):
        assert (workdir / name).exists()
    assert not (workdir / "label_issues.png").exists()  # No images to show.


@pytest.mark.parametrize(
    ("extra", "flags", "message"),
    [({"test_features": np.full((3, 64), np.nan, np.float32), "test_labels": np.zeros(3, int)},
      [], r"test_features\[0, 0\] = nan; features must be finite"),
     ({}, ["--retrain"], r"--retrain: a features audit trains one probe"),
     ({}, ["--model=small_cnn"], r"--model=small_cnn: features train a probe")],
)  # fmt: skip
def test_bad_features_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path, capsys, extra, flags, message
):
    import re

    path, _ = _digits_features(tmp_path, **extra)
    workdir = tmp_path / "audit"
    assert find_errors.main([f"--dataset=npz:{path}", f"--workdir={workdir}", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert not workdir.exists()


@pytest.mark.slow
def test_folder_of_pngs_without_test_split(tmp_path):
    digits = input_pipeline.load_split("sklearn_digits", "train")
    root = tmp_path / "images"
    for k, name in enumerate(["zero", "one", "two"]):
        (root / name).mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(digits.labels == k)[:60]):
            Image.fromarray(digits.images[i, ..., 0]).save(root / name / f"{j}.png")
    workdir = tmp_path / "audit"
    flags = ["--epochs=3", "--detector=cl", "--folds=3", "--image-size=16x12", *FAST]
    assert find_errors.main([f"--dataset=folder:{root}", f"--workdir={workdir}", *flags]) == 0
    rows = read_csv(workdir)
    assert len(rows) == 180 and {r["given_name"] for r in rows} == {"zero", "one", "two"}
    for r in rows:  # The file of each row, relative to the folder, under its given class.
        assert r["path"].split("/")[0] == r["given_name"]
        assert (root / r["path"]).is_file()
    probs = np.load(workdir / "pred_probs.npy")
    assert probs.shape == (180, 3)
    # K-fold Confident Learning: the same flags as cleanlab's on the same probabilities.
    from cleanlab.filter import find_label_issues

    rows.sort(key=lambda r: int(r["index"]))
    want = find_label_issues(np.array([int(r["given_label"]) for r in rows]), probs)
    assert [r["is_label_issue"] == "True" for r in rows] == want.tolist()
    assert strict_json(workdir / "config.json")["image_size"] == "16x12"
    summary = strict_json(workdir / "summary.json")
    assert summary["test_accuracy"] is None  # No test split: null, not NaN.


@pytest.mark.slow
def test_a_tfds_dataset_with_its_own_labels(tmp_path):
    workdir = tmp_path / "audit"
    assert find_errors.main(["--dataset=sklearn_digits", f"--workdir={workdir}", "--epochs=2",
                             "--train-size=600", "--folds=2", "--loss=ce", *FAST]) == 0  # fmt: skip
    predictions = np.load(workdir / "predictions.npz")
    assert not predictions["is_corrupted"].any()  # Nothing injected.
    np.testing.assert_array_equal(
        predictions["given_label"],
        input_pipeline.load_split("sklearn_digits", "train").labels[:600],
    )
    assert strict_json(workdir / "summary.json")["settings"]["loss"] == "cross_entropy"


def test_pred_probs_that_disagree_with_half_the_labels_are_called_implausible(
    tmp_path, digits_npz, capsys
):
    path, _ = digits_npz
    labels = np.load(path)["train_labels"]
    probs = np.full((1500, 10), 0.02, np.float32)
    wrong = np.arange(1500) % 2 == 0  # Half the rows favour another class.
    probs[np.arange(1500), np.where(wrong, (labels + 1) % 10, labels)] = 0.82
    probs_path = tmp_path / "probs.npy"
    np.save(probs_path, probs)
    workdir = tmp_path / "audit"
    assert find_errors.main([f"--dataset=npz:{path}", f"--workdir={workdir}",
                             f"--pred-probs={probs_path}"]) == 0  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    warnings = [line for line in out if line.startswith("warning: ")]
    assert any("of the labels flagged, more than 40%" in w for w in warnings), out
    assert any("underfits: 0.500 accuracy" in w for w in warnings), out
    summary = strict_json(workdir / "summary.json")
    assert [f"warning: {w}" for w in summary["warnings"]] == warnings


def test_a_robust_loss_cut_short_by_its_delay_is_named(tmp_path, digits_npz, capsys):
    path, _ = digits_npz
    workdir = tmp_path / "audit"
    assert find_errors.main([f"--dataset=npz:{path}", f"--workdir={workdir}", "--detector=pt",
                             "--loss=power", "--epochs=1", *FAST]) == 0  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    assert "trained 1 epoch(s) of cross-entropy, 0 of power" in out[2]
    assert any(line.startswith("warning: the power loss never engaged") for line in out), out
    summary = strict_json(workdir / "summary.json")
    assert summary["fit"]["robust_epochs"] == 0 and summary["fit"]["heldout_source"] == "test split"


def test_pred_probs_skip_training_and_rank_as_the_library_does(tmp_path, digits_npz):
    path, _ = digits_npz
    labels = np.load(path)["train_labels"]
    probs = np.random.default_rng(1).dirichlet(np.ones(10), size=1500).astype(np.float32)
    probs_path = tmp_path / "probs.npy"
    np.save(probs_path, probs)
    workdir = tmp_path / "audit"
    assert find_errors.main([f"--dataset=npz:{path}", f"--workdir={workdir}",
                             f"--pred-probs={probs_path}"]) == 0  # fmt: skip
    want = audit.rank_label_issues(labels, probs)
    rows = read_csv(workdir)
    assert [int(r["index"]) for r in rows] == want.ranking.tolist()
    assert not (workdir / "checkpoints_folds").exists()  # Nothing trained.
    np.testing.assert_array_equal(np.load(workdir / "pred_probs.npy"), probs)


@pytest.mark.slow
@pytest.mark.parametrize(
    "detector, epochs, epochs_before_kill",
    [("pt", 12, 2), ("cl", 6, 2 * 5)],  # The one in-sample model; 5 folds, 2 epochs of each.
)
def test_sigkill_then_resume_matches_an_uninterrupted_audit(
    tmp_path, digits_npz, sigkill_after_lines, detector, epochs, epochs_before_kill
):
    path, _ = digits_npz
    flags = [f"--dataset=npz:{path}", f"--detector={detector}", f"--epochs={epochs}",
             "--batch-size=16", *FAST[:1], *FAST[2:]]  # fmt: skip
    killed = tmp_path / "killed"
    sigkill_after_lines("experiments.find_errors", flags, killed, epochs_before_kill)
    assert not (killed / "label_issues.csv").exists()
    assert find_errors.main([*flags, f"--workdir={killed}", "--resume"]) == 0
    reference = tmp_path / "reference"
    assert find_errors.main([*flags, f"--workdir={reference}"]) == 0
    np.testing.assert_array_equal(
        np.load(killed / "pred_probs.npy"), np.load(reference / "pred_probs.npy")
    )
    assert (killed / "label_issues.csv").read_text() == (reference / "label_issues.csv").read_text()


def _bad_npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return f"--dataset=npz:{path}"


def _folder(tmp_path, empty_class=False, broken=False):
    root = tmp_path / "folder"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(root / "a" / f"{i}.png")
    if not empty_class:
        for i in range(6):
            Image.fromarray(np.full((4, 4), i, np.uint8)).save(root / "b" / f"{i}.png")
    if broken:
        (root / "b" / "broken.jpg").write_bytes(b"\x00garbage")
    return f"--dataset=folder:{root}"


IMAGES = np.zeros((20, 4, 4), np.uint8)
BAD_INPUTS = [
    (lambda t: [_bad_npz(t, train_images=IMAGES, train_labels=np.arange(20) % 3,
                         class_names=np.array(["a", "b"]))], r"train_labels\[2\] = 2 is outside"),
    (lambda t: [_bad_npz(t, train_images=IMAGES, train_labels=np.arange(19) % 2)],
     r"train_labels must be integers \[20\] \(one per image\)"),
    (lambda t: [_bad_npz(t, train_images=IMAGES.astype(np.int16), train_labels=np.arange(20) % 2)],
     r"train_images must be uint8"),
    (lambda t: [_bad_npz(t, train_images=np.array([IMAGES[0], IMAGES[0, :3]], dtype=object),
                         train_labels=np.arange(2))], r"object array \(images of mixed shapes"),
    (lambda t: [_folder(t, empty_class=True)], r"class folder 'b' holds no image file"),
    (lambda t: [_folder(t, broken=True)], r"cannot read image .*broken\.jpg"),
    (lambda t: [_bad_npz(t, train_images=IMAGES, train_labels=np.r_[np.zeros(17, int), 1, 1, 1]),
                "--detector=cl"], r"class '1' has 3 example\(s\), fewer than the 5 folds"),
    (lambda t: [_bad_npz(t, train_images=IMAGES, train_labels=np.arange(20) % 2)],
     r"--batch-size 64 exceeds the 18 examples each model trains on"),  # 2 held out.
    (lambda t: [_folder(t), f"--pred-probs={_probs(t, np.full((12, 3), 1 / 3))}"],
     r"has shape \[12, 3\]; the dataset needs \[12, 2\]"),
    (lambda t: [_folder(t), f"--pred-probs={_probs(t, np.full((12, 2), 0.6))}"],
     r"row 0 sums to 1\.2"),
    (lambda t: ["--dataset=cifar10", f"--data-dir={t / 'tfds'}"],
     r"not prepared in .* and cannot be downloaded \(no network\)"),
    (lambda t: [_folder(t), "--retrain", "--retrain-mode=fix"],
     r"--retrain-mode=fix: choose from drop, relabel"),
    (lambda t: [_folder(t), "--retrain", "--retrain-loss=ce,magic"],
     r"--retrain-loss: unknown loss 'magic'; choose from"),
    (lambda t: [_folder(t), "--retrain", "--holdout=0", "--batch-size=4"],
     r"--retrain measures test accuracy: the dataset has no test split"),
]  # fmt: skip


def _probs(tmp_path, probs):
    np.save(tmp_path / "probs.npy", probs)
    return tmp_path / "probs.npy"


@pytest.mark.parametrize(("flags", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, flags, message):
    import re

    flags = flags(tmp_path)
    if "--dataset=cifar10" in flags and input_pipeline._network_reachable():
        pytest.skip("a network is reachable: the download would start")
    workdir = tmp_path / "audit"
    assert find_errors.main([*flags, f"--workdir={workdir}", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and re.search(message, err[0]), err
    assert not workdir.exists()


def test_a_bad_image_size_is_one_line_exit_2(tmp_path, capsys):
    workdir = tmp_path / "audit"
    with pytest.raises(SystemExit) as exit_info:
        find_errors.main([_folder(tmp_path), "--image-size=0x8", f"--workdir={workdir}"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == ("error: argument --image-size: image size '0x8' is not H or HxW (positive "
                    "integers up to 1024).")  # fmt: skip
    assert not workdir.exists()


@pytest.mark.slow
def test_runner_without_injected_noise_reports_flag_counts_not_scores(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run.main(["--dataset=sklearn_digits", "--noise-rate=0", "--epochs=2", "--seed=1",
                     f"--workdir={workdir}", *FAST]) == 0  # fmt: skip
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "no injected label errors to score against" in line and "F1" not in line
    summary = strict_json(workdir / "summary.json")
    assert summary["num_corrupted"] == 0
    for scores in summary["detection"].values():
        assert set(scores) == {"num_flagged"}
    assert summary["memorised_fraction"] is None  # Undefined without corrupted examples.
    assert not math.isnan(summary["test_accuracy"])
