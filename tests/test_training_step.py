"""Tests for robust_losses_jax.training.step and .parallel: real training steps, devices, parallel
modes, guards."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_losses_jax import input_pipeline as ip
from robust_losses_jax import models
from robust_losses_jax.training import engines, parallel
from robust_losses_jax.training import step as step_lib


@pytest.fixture(scope="module")
def digits():
    split = ip.load_split("sklearn_digits", "train")
    mean, std = ip.channel_stats(split.images)
    return split, jnp.asarray(mean), jnp.asarray(std)


def run_steps(split, mean, std, *, model_name, num_devices, mode, loss="power", steps=4,
              lr=0.05, batch=64, config_kwargs=None, traces=None, model_kwargs=None):  # fmt: skip
    devices = jax.local_devices()[:num_devices]
    mesh = parallel.data_mesh(devices)
    model = models.get_model(model_name, 10, bn_axis_name=parallel.AXIS, **(model_kwargs or {}))
    tx = step_lib.make_optimizer("sgd", lr, total_steps=100)
    state = step_lib.create_train_state(jax.random.key(0), model, split.images.shape[1:], tx)
    config = step_lib.StepConfig(loss_name=loss, steps_per_epoch=5, augment=True,
                              **(config_kwargs or {}))  # fmt: skip

    def step(state, batch, hparams):
        if traces is not None:
            traces.append(1)
        return step_lib.train_step(state, batch, hparams, config=config, key=jax.random.key(1),
                                mean=mean, std=std)  # fmt: skip

    fn = parallel.parallelize(step, mesh, mode)
    state = parallel.replicate(state, mesh)
    hparams = {"gamma": jnp.float32(1.0), "tau": jnp.float32(0.0)} if loss == "power" else {}
    order = ip.epoch_permutation(jax.random.key(2), 0, len(split))
    history = []
    batches = ip.train_batches(split.images, split.labels, order, batch, num_devices)
    for _, b in zip(range(steps), batches, strict=False):
        state, metrics = fn(state, jax.device_put(b, parallel.batch_sharding(mesh)), hparams)
        history.append(jax.device_get(metrics))
    return state, history


def assert_params_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.mark.slow
def test_one_and_eight_devices_and_both_parallel_modes_agree(digits):
    split, mean, std = digits
    states = {}
    for n, mode in [(1, "pmap"), (8, "pmap"), (8, "shard_map")]:
        states[(n, mode)], _ = run_steps(
            split, mean, std, model_name="resnet_tiny", num_devices=n, mode=mode
        )
    reference = states[(1, "pmap")]
    assert int(reference.step) == 4
    # BatchNorm statistics are averaged across devices: 8 devices == one device, up to rounding.
    assert_params_close(states[(8, "pmap")].params, reference.params, atol=1e-5)
    assert_params_close(states[(8, "pmap")].batch_stats, reference.batch_stats, atol=1e-5)
    # pmap and shard_map run the same per-device function: same numbers.
    assert_params_close(states[(8, "shard_map")].params, states[(8, "pmap")].params, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["small_cnn", "mlp_dropout"])
def test_dropout_masks_do_not_depend_on_the_device_count(digits, model_name):
    """Each device draws its rows of the one-device mask: 1 device == 8 devices (== shard_map)."""
    split, mean, std = digits
    if model_name == "mlp_dropout":
        models_kwargs = {"dropout_rate": 0.5}
        model_name = "mlp"
    else:
        models_kwargs = {}
    states = {}
    for n, mode in [(1, "pmap"), (8, "pmap"), (8, "shard_map")]:
        states[(n, mode)], _ = run_steps(
            split, mean, std, model_name=model_name, num_devices=n, mode=mode,
            model_kwargs=models_kwargs,
        )  # fmt: skip
    reference = states[(1, "pmap")].params
    assert_params_close(states[(8, "pmap")].params, reference, atol=1e-5)
    assert_params_close(states[(8, "shard_map")].params, reference, atol=1e-5)


@pytest.mark.slow
def test_training_lowers_the_loss_on_fashion_mnist():
    split = ip.load_split("fashion_mnist", "train", num_examples=2048)
    mean, std = (jnp.asarray(x) for x in ip.channel_stats(split.images))
    _, history = run_steps(split, mean, std, model_name="small_cnn", num_devices=1, mode="pmap",
                           loss="cross_entropy", steps=30, lr=0.05)  # fmt: skip
    first = np.mean([h["loss_sum"] / h["count"] for h in history[:5]])
    last = np.mean([h["loss_sum"] / h["count"] for h in history[-5:]])
    assert last < 0.7 * first, (first, last)
    assert all(int(h["finite"]) == 1 for h in history)


def test_delay_switches_loss_without_recompiling(digits):
    split, mean, std = digits
    traces = []
    _, history = run_steps(split, mean, std, model_name="mlp", num_devices=2, mode="pmap",
                           loss="cutoff", steps=6, config_kwargs={"delay_steps": 3},
                           traces=traces)  # fmt: skip
    assert len(traces) == 1
    # During the delay nothing is switched off; after it, cutoff drops low-p_t examples.
    assert [int(h["low_weight"]) for h in history[:3]] == [0, 0, 0]
    assert sum(int(h["low_weight"]) for h in history[3:]) > 0


def test_non_finite_step_is_flagged_and_not_applied(digits):
    split, mean, std = digits
    state, history = run_steps(split, mean, std, model_name="mlp", num_devices=1, mode="pmap",
                               loss="cross_entropy", steps=4, lr=1e30)  # fmt: skip
    flags = [int(h["finite"]) for h in history]
    assert 0 in flags
    assert all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree.leaves(state.params))


def test_eval_step_outputs(digits):
    split, mean, std = digits
    mesh = parallel.data_mesh(jax.local_devices()[:4])
    model = models.get_model("mlp", 10)
    tx = step_lib.make_optimizer("adam", 1e-3, total_steps=10)
    state = step_lib.create_train_state(jax.random.key(0), model, (8, 8, 1), tx)
    config = step_lib.StepConfig(loss_name="power")
    eval_fn = parallel.parallelize(
        functools.partial(step_lib.eval_step, config=config, mean=mean, std=std), mesh,
        collective=False,
    )  # fmt: skip
    hparams = {"gamma": jnp.float32(2.0), "tau": jnp.float32(0.0)}
    out = engines.evaluate(eval_fn, state, split.images[:999], split.labels[:999], hparams,
                         mesh=mesh, batch_size=400)  # fmt: skip
    assert out["p_t"].shape == (999,) and out["probs"].shape == (999, 10)
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, rtol=1e-5)
    rows = np.arange(999)
    np.testing.assert_allclose(out["p_t"], out["probs"][rows, split.labels[:999]], rtol=1e-5)
    logits = out["logits"]
    other = np.where(np.eye(10, dtype=bool)[split.labels[:999]], -np.inf, logits).max(1)
    np.testing.assert_allclose(out["margin"], logits[rows, split.labels[:999]] - other, rtol=1e-5)
    np.testing.assert_array_equal(out["pred"], logits.argmax(1))
    np.testing.assert_allclose(out["weight"], out["p_t"] ** 2, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [({"name": "rmsprop"}, r"Unknown optimizer 'rmsprop'; choose from sgd, adam, adamw"),
     ({"schedule": "linear"}, r"Unknown lr schedule 'linear'"),
     ({"learning_rate": 0.0}, r"learning rate 0.0 must be > 0")],
)  # fmt: skip
def test_bad_optimizer_arguments(kwargs, message):
    args = {"name": "sgd", "learning_rate": 0.1, "total_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        step_lib.make_optimizer(**args)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_build_and_step(name, schedule):
    tx = step_lib.make_optimizer(name, 0.1, total_steps=10, schedule=schedule, warmup_steps=2,
                              weight_decay=1e-4)  # fmt: skip
    params = {"w": jnp.ones(3)}
    updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
    assert np.all(np.isfinite(np.asarray(updates["w"])))


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["small_cnn", "resnet_tiny"])
def test_create_train_state_is_one_program_with_eager_values(model_name):
    """The jitted initialisation gives exactly the op-by-op values, and compiles once per model."""
    model = models.get_model(model_name, 10, bn_axis_name=parallel.AXIS)
    tx = step_lib.make_optimizer("adam", 1e-3, total_steps=10)
    key = jax.random.key(3)
    state = step_lib.create_train_state(key, model, (12, 12, 3), tx)
    eager = model.init({"params": key, "dropout": key}, jnp.zeros((1, 12, 12, 3)), train=False)
    jax.tree.map(np.testing.assert_array_equal, state.params, eager["params"])
    before = step_lib._init_variables._cache_size()
    again = models.get_model(model_name, 10, bn_axis_name=parallel.AXIS)  # Equal, not identical.
    step_lib.create_train_state(jax.random.key(4), again, (12, 12, 3), tx)
    assert step_lib._init_variables._cache_size() == before


def test_create_train_state_takes_unhashable_models():
    """A list-valued field cannot be a static argument: initialised op by op, same values."""
    tx = step_lib.make_optimizer("sgd", 0.1, total_steps=10)
    listed = models.get_model("mlp", 10, hidden_sizes=[16, 8])
    tupled = models.get_model("mlp", 10, hidden_sizes=(16, 8))
    with pytest.raises(TypeError):
        hash(listed)
    a = step_lib.create_train_state(jax.random.key(0), listed, (8, 8, 1), tx)
    b = step_lib.create_train_state(jax.random.key(0), tupled, (8, 8, 1), tx)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
