"""The runner end to end on a small real dataset: every output file, resume, bad flags."""

import json

import numpy as np
import pytest

from robust_losses_jax.commands import run

# Checkpoints every epoch, however fast (these tests resume from them); the default's clock is
# tested on its own.
BASE = ["--dataset=sklearn_digits", "--model=mlp", "--batch-size=64", "--eval-batch-size=256",
        "--train-size=0", "--no-progress", "--seed=3", "--checkpoint-min-interval=0"]  # fmt: skip


@pytest.mark.slow
def test_run_writes_every_output(tmp_path, capsys):
    workdir = tmp_path / "power"
    code = run.main([*BASE, "--loss=power", "--gamma=2", "--epochs=3", f"--workdir={workdir}"])
    assert code == 0
    assert "detection F1" in capsys.readouterr().out.strip().splitlines()[-1]
    config = json.loads((workdir / "config.json").read_text())
    assert config["loss"] == "power" and config["delay_epochs"] == 2  # Default delay, stated.
    assert config["loss_hparams"] == {"gamma": 2.0, "tau": 0.0}
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert {"train_loss", "train_accuracy_noisy", "frac_low_weight", "test_accuracy"} <= set(
        lines[0]
    )
    assert lines[0]["frac_low_weight"] == 0.0  # Cross-entropy during the delay.
    # The training set is scored after every epoch; its p_t history is kept.
    assert {"f1_argmax_neq_given", "auroc_1_minus_pt", "memorised_fraction"} <= set(lines[-1])
    history = np.load(workdir / "train_record.npz")["p_t_history"]
    assert history.shape == (3, 1500)
    pred = np.load(workdir / "predictions.npz")
    n = 1500
    np.testing.assert_allclose(history[-1], pred["p_t"], atol=1e-3)  # Last epoch = final pass.
    for name in ("p_t", "margin", "pred", "weight", "given_label", "true_label", "is_corrupted"):
        assert pred[name].shape == (n,), name
    assert pred["probs"].shape == (n, 10)
    assert pred["is_corrupted"].sum() == 300  # Exactly 20% symmetric noise.
    np.testing.assert_array_equal(pred["is_corrupted"], pred["given_label"] != pred["true_label"])
    np.testing.assert_allclose(pred["p_t"], pred["probs"][np.arange(n), pred["given_label"]],
                               rtol=1e-5)  # fmt: skip
    summary = json.loads((workdir / "summary.json").read_text())
    assert 0.5 < summary["test_accuracy"] <= 1.0
    detection = summary["detection"]
    for name in ("argmax_neq_given", "pt_below_0.5"):
        assert set(detection[name]) >= {"precision", "recall", "f1", "balanced_accuracy"}
    assert detection["ranking_1_minus_pt"]["auroc"] > 0.8
    assert len(list((workdir / "checkpoints").iterdir())) == 3
    assert not list(workdir.glob(".*tmp"))  # No temporary files left behind.


@pytest.mark.slow
def test_same_seed_same_result_and_resume_matches(tmp_path):
    full, again, resumed = (tmp_path / name for name in ("full", "again", "resumed"))
    args = [*BASE, "--loss=cutoff", "--tau=0.1", "--delay=1"]
    assert run.main([*args, "--epochs=3", f"--workdir={full}"]) == 0
    assert run.main([*args, "--epochs=3", f"--workdir={again}"]) == 0
    assert run.main([*args, "--epochs=2", f"--workdir={resumed}"]) == 0
    assert run.main([*args, "--epochs=3", f"--workdir={resumed}", "--resume"]) == 0
    reference = np.load(full / "predictions.npz")
    for other in (again, resumed):
        data = np.load(other / "predictions.npz")
        for name in reference.files:
            np.testing.assert_array_equal(data[name], reference[name], err_msg=f"{other} {name}")
    lines = (resumed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


@pytest.mark.slow
def test_eval_and_checkpoint_every_n_epochs_train_the_same(tmp_path):
    """--eval-every / --checkpoint-every thin out test evaluations (with the training rows'
    tracking) and checkpoints (the last epoch always has both); the model is the same, and a
    resume may change them."""
    every, sparse = tmp_path / "every", tmp_path / "sparse"
    args = [*BASE, "--loss=power", "--gamma=1", "--delay=1"]
    assert run.main([*args, "--epochs=5", f"--workdir={every}"]) == 0
    sparse_args = [*args, f"--workdir={sparse}", "--eval-every=2", "--checkpoint-every=3"]
    assert run.main([*sparse_args, "--epochs=4"]) == 0
    lines = [json.loads(x) for x in (sparse / "metrics.jsonl").read_text().splitlines()]
    assert [("test_accuracy" in x) for x in lines] == [False, True, False, True]
    steps = sorted(int(p.name) for p in (sparse / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [lines[2]["step"], lines[3]["step"]]  # Epochs 3 and 4 (the last).
    # Extended with other settings: resumes from epoch 4 and ends like the dense run.
    assert run.main([*args, f"--workdir={sparse}", "--epochs=5", "--resume"]) == 0
    lines = [json.loads(x) for x in (sparse / "metrics.jsonl").read_text().splitlines()]
    dense = [json.loads(x) for x in (every / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3, 4, 5]
    for a, b in zip(lines, dense, strict=True):
        assert a["train_loss"] == b["train_loss"]
        assert a.get("test_accuracy", b["test_accuracy"]) == b["test_accuracy"]
        # The training rows are tracked (p_t, detection scores) when the test set is.
        assert ("f1_argmax_neq_given" in a) == ("test_accuracy" in a)
        assert a.get("f1_argmax_neq_given", b["f1_argmax_neq_given"]) == b["f1_argmax_neq_given"]
    history = np.load(sparse / "train_record.npz")["p_t_history"]
    dense_history = np.load(every / "train_record.npz")["p_t_history"]
    assert history.shape == dense_history.shape == (5, dense_history.shape[1])
    untracked = np.isnan(history).all(axis=1)
    assert untracked.tolist() == [True, False, True, False, False]  # Epochs 1 and 3.
    np.testing.assert_array_equal(history[~untracked], dense_history[~untracked])
    reference = np.load(every / "predictions.npz")
    with np.load(sparse / "predictions.npz") as data:
        for name in reference.files:
            np.testing.assert_array_equal(data[name], reference[name], err_msg=name)


@pytest.mark.slow
def test_checkpoints_wait_for_the_min_interval_and_the_model_is_the_same(tmp_path):
    """By default an epoch's checkpoint is skipped while the last is under 60 s old: this run's
    3 epochs take a few seconds, so only the last is saved. Training is unchanged."""
    every, timed = tmp_path / "every", tmp_path / "timed"
    args = [*BASE, "--epochs=3"]
    assert run.main([*args, f"--workdir={every}"]) == 0
    default = [a for a in args if not a.startswith("--checkpoint-min-interval")]
    assert run.main([*default, f"--workdir={timed}"]) == 0
    steps = sorted(int(p.name) for p in (timed / "checkpoints").iterdir() if p.name.isdigit())
    lines = [json.loads(x) for x in (timed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [lines[-1]["step"]]  # Only the last epoch's.
    assert len(list((every / "checkpoints").iterdir())) == 3
    reference = np.load(every / "predictions.npz")
    with np.load(timed / "predictions.npz") as data:
        for name in reference.files:
            np.testing.assert_array_equal(data[name], reference[name], err_msg=name)
    # The interval may change on resume (it decides when to save, not what is trained).
    assert run.main([*args, "--epochs=4", f"--workdir={timed}", "--resume"]) == 0


@pytest.mark.slow
def test_resume_before_the_first_checkpoint_starts_again_without_duplicate_epochs(tmp_path):
    """Killed after logging epochs but before any checkpoint (--checkpoint-every > 1): resumed,
    it trains from the start and logs each epoch once."""
    import shutil

    fresh, killed = tmp_path / "fresh", tmp_path / "killed"
    args = [*BASE, "--loss=ce", "--checkpoint-every=5"]
    assert run.main([*args, "--epochs=3", f"--workdir={fresh}"]) == 0
    assert run.main([*args, "--epochs=2", f"--workdir={killed}"]) == 0
    shutil.rmtree(killed / "checkpoints")  # As if killed in epoch 3, before its checkpoint.
    assert run.main([*args, "--epochs=3", f"--workdir={killed}", "--resume"]) == 0
    lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    reference = np.load(fresh / "predictions.npz")
    with np.load(killed / "predictions.npz") as data:
        for name in reference.files:
            np.testing.assert_array_equal(data[name], reference[name], err_msg=name)


@pytest.mark.slow
def test_runs_stacked_together_resume_from_the_stack_checkpoint(tmp_path):
    """Two runs (seeds x gamma) in one stack: 2 epochs, then extended to 3 from the stack's
    checkpoint, equal each run trained alone for 3 epochs."""
    from robust_losses_jax import config as config_lib
    from robust_losses_jax import experiment

    def config(seed, gamma, epochs):
        return config_lib.Config(
            dataset="sklearn_digits", model="mlp", batch_size=64, eval_batch_size=256,
            train_size=None, loss="power", loss_hparams={"gamma": gamma}, delay_epochs=1,
            seed=seed, epochs=epochs, checkpoint_min_interval=0,
        )  # fmt: skip

    settings = [(0, 1.0), (1, 2.0)]
    runs = [tmp_path / f"run{i}" for i in range(len(settings))]
    for epochs in (2, 3):
        experiment.train_and_evaluate_together(
            [config(s, g, epochs) for s, g in settings], runs, tmp_path / "stack",
            progress=False, log=lambda _: None,
        )  # fmt: skip
    assert len(list((tmp_path / "stack" / "checkpoints_stack").iterdir())) == 3  # 3 epochs kept.
    for (seed, gamma), workdir in zip(settings, runs, strict=True):
        alone = tmp_path / f"alone{seed}"
        experiment.train_and_evaluate(
            config(seed, gamma, 3), alone, progress=False, log=lambda _: None
        )
        got, want = np.load(workdir / "predictions.npz"), np.load(alone / "predictions.npz")
        np.testing.assert_allclose(got["p_t"], want["p_t"], atol=2e-5)
        lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
        assert [x["epoch"] for x in lines] == [1, 2, 3]
        history = np.load(workdir / "train_record.npz")["p_t_history"]
        np.testing.assert_allclose(
            history, np.load(alone / "train_record.npz")["p_t_history"], atol=2e-3
        )
    with pytest.raises(ValueError, match="may differ only in"):
        experiment.train_and_evaluate_together(
            [config(0, 1.0, 1), config_lib.Config(**{**config(1, 1.0, 1).__dict__, "lr": 0.1})],
            [tmp_path / "x", tmp_path / "y"], tmp_path / "stack2", progress=False,
        )  # fmt: skip


@pytest.mark.slow
def test_data_on_device_trains_like_streaming(tmp_path):
    """Same seed, same corruption and batches whether the split lives on the devices (each epoch
    one compiled program) or is streamed from the host a step at a time."""
    args = [*BASE, "--loss=power", "--gamma=2", "--delay=1", "--epochs=3"]
    outputs = {}
    for placement in ("device", "stream"):
        workdir = tmp_path / placement
        assert run.main([*args, f"--data-placement={placement}", f"--workdir={workdir}"]) == 0
        outputs[placement] = np.load(workdir / "predictions.npz")
    device, stream = outputs["device"], outputs["stream"]
    for name in ("given_label", "true_label", "is_corrupted", "pred"):
        np.testing.assert_array_equal(device[name], stream[name], err_msg=name)
    for name in ("p_t", "probs", "margin", "weight"):
        np.testing.assert_allclose(device[name], stream[name], atol=2e-5, err_msg=name)


@pytest.mark.parametrize(
    "flags,message",
    [(["--loss=nope"], "Unknown loss 'nope'"),
     (["--loss=power", "--gamma=-1"], "gamma=-1.0 is outside its domain"),
     (["--loss=cutoff", "--tau=1.5"], "tau=1.5 is outside its domain"),
     (["--loss=gce", "--gamma=2"], "'gce' does not take gamma"),
     (["--model=vgg"], "Unknown model 'vgg'"),
     (["--optimizer=rmsprop"], "Unknown optimizer 'rmsprop'"),
     (["--noise-rate=1.0"], "noise rate 1.0 must be in [0, 1)"),
     (["--noise-kind=pairflip"], "Unknown noise kind 'pairflip'"),
     (["--epochs=0"], "epochs 0 must be >= 1"),
     (["--eval-every=0"], "eval every 0 epochs: must be >= 1"),
     (["--checkpoint-every=-1"], "checkpoint every -1 epochs: must be >= 1"),
     (["--checkpoint-min-interval=-1"], "checkpoint min interval -1.0 s: must be >= 0"),
     (["--parallel=xmap"], "Unknown parallel mode 'xmap'"),
     (["--noise-kind=transition"], "needs a transition matrix"),
     (["--noise-kind=transition", "--transition={T_NOT_STOCHASTIC}"],
      "transition row 1 sums to 0.5"),
     (["--noise-kind=transition", "--transition={T_NOT_SQUARE}"],
      "transition must have shape [num_classes, num_classes] = [2, 2]; got [2, 3]"),
     (["--noise-kind=transition", "--transition={T_NOT_JSON}"], "not a JSON [C, C] matrix"),
     (["--noise-kind=transition", "--transition={T_MISSING}"], "No such file"),
     (["--batch-size=60"], "batch size 60 is not a positive multiple of the device count 8"),
     (["--lr=0"], "learning rate 0.0 must be > 0"),
     (["--dtype=float16"], "Unknown dtype 'float16'"),
     (["--lr-schedule=linear"], "Unknown lr schedule 'linear'"),
     (["--train-size=-5"], "train size -5 must be >= 1"),
     (["--pt-threshold=1"], "p_t threshold 1.0 must be in (0, 1)"),
     (["--detector=loss"], "Unknown detector 'loss'"),
     (["--detector=cl", "--folds=1"], "folds 1 must be >= 2"),
     (["--holdout=0.6"], "holdout 0.6 must be in [0, 0.5] or auto"),
     (["--holdout=most"], "invalid value: 'most' (a fraction such as 0.1, or auto)"),
     (["--detector=cl", "--holdout=0.1"], "holdout 0.1 is for --detector=pt"),
     (["--detector=cl", "--cl-filter-by=magic"], "Unknown cl filter_by 'magic'"),
     (["--detector=aum", "--aum-percentile=0"], "aum percentile 0.0 must be in (0, 100]"),
     (["--data-placement=gpu"], "Unknown data placement 'gpu'"),
     (["--dataset=npz:{NPZ_BAD_LABELS}"], "train_labels[3] = 10 is outside [0, 10)"),
     (["--dataset=npz:{T_MISSING}"], "cannot read it as a .npz file"),
     (["--dataset=nope"], "Unknown dataset 'nope'"),
     (["--noise-kind=asymmetric"], "--noise-kind=asymmetric: No asymmetric map for dataset")],
)  # fmt: skip
def test_bad_flags_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    files = {
        "T_NOT_STOCHASTIC": [[1.0, 0.0], [0.25, 0.25]],
        "T_NOT_SQUARE": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
    }
    paths = {name: tmp_path / f"{name}.json" for name in (*files, "T_NOT_JSON", "T_MISSING")}
    for name, matrix in files.items():
        paths[name].write_text(json.dumps(matrix))
    paths["T_NOT_JSON"].write_text("[[1, 0], [0, 1")
    # The user's own data with a label outside [0, C): caught before any work.
    paths["NPZ_BAD_LABELS"] = tmp_path / "bad_labels.npz"
    labels = np.arange(20) % 10
    labels[3] = 10
    images = np.zeros((20, 8, 8), np.uint8)
    np.savez(paths["NPZ_BAD_LABELS"], train_images=images, train_labels=labels,
             test_images=images, test_labels=labels % 10, num_classes=10)  # fmt: skip
    flags = [f.format(**paths) for f in flags]
    workdir = tmp_path / "bad"
    assert run.main([*BASE, *flags, f"--workdir={workdir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not workdir.exists()


def test_cl_detector_k_fold_out_of_sample_probabilities(tmp_path, capsys):
    """Every example's probabilities come from the one fold model that did not train on it, back
    in its own row; the flags are Confident Learning's, the same as cleanlab's on those rows."""
    cleanlab_filter = pytest.importorskip("cleanlab.filter")
    workdir = tmp_path / "cl"
    flags = [*BASE, "--epochs=2", "--detector=cl", "--folds=3", f"--workdir={workdir}"]
    assert run.main(flags) == 0
    assert "CL F1" in capsys.readouterr().out.strip().splitlines()[-1]
    pred = np.load(workdir / "predictions.npz")
    n = len(pred["given_label"])
    fold = pred["fold"]
    assert sorted(np.bincount(fold).tolist()) == [n // 3] * 3  # 1500 = 3 x 500.
    for k in range(3):
        held_out = np.load(workdir / f"fold{k}.npz")
        rows = fold == k
        np.testing.assert_array_equal(pred["probs"][rows], held_out["probs"])
        np.testing.assert_array_equal(pred["p_t"][rows], held_out["p_t"])
    # Each fold model is a fresh model, logged under its own name; the three train together
    # (one vmapped stack), so each epoch logs all three.
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [(x["run"], x["epoch"]) for x in lines] == [
        ("fold0", 1), ("fold1", 1), ("fold2", 1), ("fold0", 2), ("fold1", 2), ("fold2", 2)
    ]  # fmt: skip
    assert len({x["train_loss"] for x in lines}) == 6  # Three different models.
    np.testing.assert_allclose(pred["probs"].sum(1), 1.0, rtol=1e-5)
    expected = cleanlab_filter.find_label_issues(
        pred["given_label"], pred["probs"].astype(np.float64), n_jobs=1
    )
    np.testing.assert_array_equal(pred["is_flagged_cl"], expected)
    summary = json.loads((workdir / "summary.json").read_text())
    cl = summary["detection"]["confident_learning"]
    assert cl["num_flagged"] == int(expected.sum()) and cl["filter_by"] == "prune_by_noise_rate"
    assert len(summary["test_accuracy_per_fold"]) == 3
    # A finished fold is not re-trained on --resume: the comparison is resumable.
    mtime = (workdir / "fold1.npz").stat().st_mtime_ns
    assert run.main([*flags, "--resume"]) == 0
    assert (workdir / "fold1.npz").stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(np.load(workdir / "predictions.npz")["probs"], pred["probs"])
    # One fold after another (--sequential) gives the same numbers up to float rounding.
    sequential = tmp_path / "cl_sequential"
    flags = [*flags[:-1], f"--workdir={sequential}", "--sequential"]
    assert run.main(flags) == 0
    lines = [json.loads(x) for x in (sequential / "metrics.jsonl").read_text().splitlines()]
    assert [x["run"] for x in lines] == ["fold0", "fold0", "fold1", "fold1", "fold2", "fold2"]
    assert sorted(p.name for p in sequential.glob("checkpoints_*")) == [
        "checkpoints_fold0", "checkpoints_fold1", "checkpoints_fold2"
    ]  # fmt: skip
    other = np.load(sequential / "predictions.npz")
    np.testing.assert_allclose(other["probs"], pred["probs"], atol=2e-5)
    np.testing.assert_array_equal(other["is_flagged_cl"], pred["is_flagged_cl"])


def test_aum_detector_two_runs_with_disjoint_threshold_examples(tmp_path):
    workdir = tmp_path / "aum"
    assert run.main([*BASE, "--epochs=2", "--detector=aum", f"--workdir={workdir}"]) == 0
    pred = np.load(workdir / "predictions.npz")
    n = len(pred["given_label"])
    t0, t1 = pred["is_threshold_run0"], pred["is_threshold_run1"]
    assert t0.sum() == t1.sum() == n // 11 and not (t0 & t1).any()
    # Margins were recorded at every step: each example at most once per epoch (1500 = 23 x 64 +
    # 28, the last incomplete batch dropped); an example never trained on has no AUM (NaN).
    counts = []
    for r in range(2):
        saved = np.load(workdir / f"train_record_aum{r}.npz")
        per_epoch = saved["margin_count_history"]
        assert per_epoch.shape == (2, n) and set(np.unique(per_epoch)) <= {0, 1}
        assert per_epoch.sum() == 2 * (n // 64) * 64
        counts.append(per_epoch[1:].sum(0))  # The reference AUM leaves the first epoch out.
    seen = np.where(t0, counts[1], counts[0]) > 0
    np.testing.assert_array_equal(np.isfinite(pred["aum"]), seen)
    assert seen.mean() > 0.97
    summary = json.loads((workdir / "summary.json").read_text())
    aum = summary["detection"]["aum"]
    assert aum["num_flagged"] == int(pred["is_flagged_aum"].sum()) > 0
    assert aum["auroc"] > 0.8  # Mislabelled examples have low margins.
    assert pred["probs"].shape == (n, 10)  # The fake class is not among the outputs.


@pytest.mark.slow
def test_a_workdir_holding_another_run_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    workdir = tmp_path / "taken"
    first = [*BASE, "--epochs=1", f"--workdir={workdir}"]
    assert run.main(first) == 0
    summary = (workdir / "summary.json").read_text()
    capsys.readouterr()
    for flags, message in [
        ([], "already holds a run; pass --resume to continue it or --overwrite"),
        (["--seed=4", "--resume"], "different config (seed: 3 -> 4)"),
        (["--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
    ]:
        assert run.main([*first, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert (workdir / "summary.json").read_text() == summary  # Untouched.
    # --overwrite replaces it: one checkpoint, metrics of the new run only.
    assert run.main([*first, "--loss=mae", "--overwrite"]) == 0
    assert json.loads((workdir / "config.json").read_text())["loss"] == "mae"
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1
    assert len(list((workdir / "checkpoints").iterdir())) == 1


def test_non_finite_training_stops_with_epoch_step_and_cause(tmp_path, capsys):
    workdir = tmp_path / "diverged"
    flags = [*BASE, "--epochs=2", "--optimizer=sgd", "--lr=1e30", f"--workdir={workdir}"]
    assert run.main(flags) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "non-finite loss or gradient in epoch 1, step" in err and "learning rate 1e+30" in err
    assert "No checkpoint was saved before it" in err  # Epoch 1 had none to keep.
    assert not (workdir / "summary.json").exists() and not (workdir / "predictions.npz").exists()


def test_a_damaged_training_record_names_itself_on_resume(tmp_path, capsys):
    workdir = tmp_path / "damaged_record"
    flags = [*BASE, "--epochs=2", f"--workdir={workdir}"]
    assert run.main(flags) == 0
    (workdir / "train_record.npz").write_bytes(b"PK\3\4 not a zip")
    capsys.readouterr()
    assert run.main([*flags[:-2], "--epochs=3", f"--workdir={workdir}", "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"the training record {workdir / 'train_record.npz'}" in err
    assert "pass --overwrite to start again" in err


@pytest.mark.slow
def test_a_damaged_checkpoint_names_itself_and_the_fallback(tmp_path, capsys):
    workdir = tmp_path / "damaged"
    flags = [*BASE, "--epochs=2", f"--workdir={workdir}"]
    assert run.main(flags) == 0
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    latest = workdir / "checkpoints" / str(steps[-1])
    for path in latest.rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"\0" * 7)  # Damage every file of the latest checkpoint.
    capsys.readouterr()
    assert run.main([*flags, "--epochs=3", "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"checkpoint {latest} cannot be restored" in err
    assert f"delete {latest} to resume from step {steps[-2]}" in err
    # Following the advice works.
    import shutil

    shutil.rmtree(latest)
    assert run.main([*flags, "--epochs=3", "--resume"]) == 0
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]  # Epoch 2, trained again, logged once.


@pytest.mark.parametrize(
    ("kill_after_epochs", "extra"),
    # With --checkpoint-every=2 the kill comes an epoch after the last checkpoint: the resumed
    # run trains epoch 3 again, whose record file is already there.
    [(1, []), (2, []), (3, ["--checkpoint-every=2"])],
)
@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(
    tmp_path, kill_after_epochs, extra, sigkill_after_lines
):
    """A real subprocess killed with SIGKILL after some epochs (in the next one), then --resume:
    the same predictions.npz, bit for bit, as a run never interrupted."""
    flags = [*BASE, "--loss=power", "--gamma=0.5", "--delay=1", "--batch-size=16",
             "--epochs=4", *extra]  # fmt: skip
    killed = tmp_path / "killed"
    sigkill_after_lines("experiments.run", flags, killed, kill_after_epochs)
    metrics = killed / "metrics.jsonl"
    assert not (killed / "summary.json").exists()
    # A temporary file the kill interrupted may remain: it is never read (only final names are).

    assert run.main([*flags, f"--workdir={killed}", "--resume"]) == 0
    reference = tmp_path / "reference"
    assert run.main([*flags, f"--workdir={reference}"]) == 0
    want, got = np.load(reference / "predictions.npz"), np.load(killed / "predictions.npz")
    for name in want.files:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3, 4]
    ref_history = np.load(reference / "train_record.npz")
    history = np.load(killed / "train_record.npz")
    for name in ref_history.files:
        np.testing.assert_array_equal(history[name], ref_history[name], err_msg=name)
    # The per-epoch files (the killed run's only record) were gathered and removed.
    assert not (killed / "train_record.epochs").exists()


@pytest.mark.slow
def test_two_processes_of_4_devices_equal_one_process_of_8(tmp_path):
    """Multi-host on one machine: 2 CPU processes (jax.distributed, gloo) x 4 devices each, each
    feeding its devices its slice of every batch and only process 0 writing, give the outputs of
    one process with 8 devices."""
    import os
    import socket
    import subprocess
    import sys

    from robust_losses_jax import xla_setup

    flags = [*BASE, "--epochs=2", "--loss=power", "--gamma=0.5", "--delay=1"]
    single = tmp_path / "single"
    assert run.main([*flags, f"--workdir={single}"]) == 0  # conftest: 8 devices, one process.

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    xla_setup.configure_cpu(num_devices=4, environ=env)
    multi = tmp_path / "multi"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.run",
                *flags,
                f"--workdir={multi}",
                f"--coordinator-address=127.0.0.1:{port}",
                "--num-processes=2",
                f"--process-id={i}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=400)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert "detection F1" in outputs[0] and "detection F1" not in outputs[1]  # Process 0 logs.
    summary = json.loads((multi / "summary.json").read_text())
    assert summary["devices"] == 8
    want, got = np.load(single / "predictions.npz"), np.load(multi / "predictions.npz")
    for name in want.files:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
