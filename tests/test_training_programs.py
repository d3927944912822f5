"""Tests for robust_losses_jax.training.programs: whole epochs on the devices, vmapped model stacks.

The reference for every check is the streaming path (host batches, one pmap'd step at a time,
:func:`step_lib.train_step`): the compiled epoch must train on the same batches and reach the same
weights up to float rounding, one model or a stack.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_losses_jax import input_pipeline as ip
from robust_losses_jax import models
from robust_losses_jax.training import engines, parallel, programs, stacking
from robust_losses_jax.training import step as step_lib

BATCH = 64


@pytest.fixture(scope="module")
def digits():
    split = ip.load_split("sklearn_digits", "train")
    mean, std = ip.channel_stats(split.images)
    return split, jnp.asarray(mean), jnp.asarray(std)


def make_member(split, rows, seed, gamma, tag=""):
    keys = tuple(jax.random.fold_in(jax.random.key(seed), i) for i in range(3))
    return stacking.Member(
        labels=split.labels, rows=np.asarray(rows), keys=keys, hparams={"gamma": gamma, "tau": 0.0},
        tag=tag,
    )  # fmt: skip


def setting(split, mean, std, model_name, steps_per_epoch, augment=True):
    model = models.get_model(model_name, 10, bn_axis_name=parallel.AXIS)
    tx = step_lib.make_optimizer("sgd", 0.05, total_steps=100)  # Adam would magnify rounding.
    config = step_lib.StepConfig(
        loss_name="power", delay_steps=2, steps_per_epoch=steps_per_epoch, augment=augment
    )
    init = functools.partial(
        step_lib.create_train_state, model=model, image_shape=split.images.shape[1:], tx=tx
    )
    return init, config


def streaming_epochs(split, mean, std, member, *, model_name, epochs, devices, mode="pmap",
                     sums=None):  # fmt: skip
    """The reference: one member, host batches of its rows, one parallel step at a time.

    ``sums``: a dict that receives the summed metrics of the last epoch and its ``finite`` flags.
    """
    steps = len(member.rows) // BATCH
    init, config = setting(split, mean, std, model_name, steps)
    mesh = parallel.data_mesh(devices)
    step = functools.partial(
        step_lib.train_step, config=config, key=member.keys[1], mean=mean, std=std
    )
    fn = parallel.parallelize(step, mesh, mode)
    state = parallel.replicate(init(member.keys[0]), mesh)
    hparams = {k: jnp.float32(v) for k, v in member.hparams.items()}
    images, labels = split.images[member.rows], split.labels[member.rows]
    margins = []
    for epoch in range(epochs):
        order = ip.epoch_permutation(member.keys[2], epoch, len(member.rows))
        steps = []
        for batch in ip.train_batches(images, labels, order, BATCH, len(devices)):
            batch = jax.device_put(batch, parallel.batch_sharding(mesh))
            state, metrics = fn(state, batch, hparams)
            steps.append(jax.device_get(metrics))
            margins.append(steps[-1]["margin"])
        if sums is not None:
            sums.update({k: sum(m[k] for m in steps) for k in programs.SUMMED})
            sums["finite"] = np.array([m["finite"] for m in steps])
    return state, np.concatenate(margins)


def device_epochs(split, mean, std, members, *, model_name, epochs, devices, mode="pmap",
                  vectorize=None):  # fmt: skip
    """The stack: every epoch one compiled program for all members (on CPU by default one
    program per member in turn; ``vectorize=True``: vmapped, as on accelerators)."""
    steps = len(members[0].rows) // BATCH
    init, config = setting(split, mean, std, model_name, steps)
    mesh = parallel.data_mesh(devices)

    def step_fn(state, batch, hparams, key):
        return step_lib.train_step(
            state, batch, hparams, config=config, key=key, mean=mean, std=std
        )

    program = programs.train_epoch_program(
        step_fn, mesh, mode, sizes=tuple(len(m.rows) for m in members), batch_size=BATCH,
        steps_per_epoch=steps, vectorize=vectorize,
    )  # fmt: skip
    states = parallel.replicate(stacking.stack([init(m.keys[0]) for m in members]), mesh)
    data = parallel.replicate(stacking.stack_data(split.images, members), mesh)
    hparams = stacking.stacked_hparams(members)
    step_keys = jnp.stack([m.keys[1] for m in members])
    order_keys = jnp.stack([m.keys[2] for m in members])
    metrics = []
    for epoch in range(epochs):
        states, out = program(states, data, hparams, step_keys, order_keys, jnp.int32(epoch))
        metrics.append(jax.device_get(out))
    return states, metrics


def assert_trees_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def test_epoch_order_is_the_host_permutation_cut_into_batches():
    key = jax.random.key(7)
    order = jax.jit(programs.epoch_order, static_argnums=(2, 3, 4))(key, 3, 100, 6, 16)
    chex.assert_shape(order, (6, 16))
    np.testing.assert_array_equal(np.asarray(order).ravel(), ip.epoch_permutation(key, 3, 100)[:96])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_a_compiled_epoch_trains_like_the_streaming_steps(digits, mode):
    """Small CNN with dropout and augmentation, 8 devices, two epochs (the delay switches the
    loss on mid-way): same weights and the same per-step margins as host-fed steps."""
    split, mean, std = digits
    member = make_member(split, np.arange(640), seed=0, gamma=2.0)
    devices = jax.local_devices()[:8]
    ref_state, ref_margins = streaming_epochs(
        split, mean, std, member, model_name="small_cnn", epochs=2, devices=devices
    )
    states, metrics = device_epochs(
        split, mean, std, [member], model_name="small_cnn", epochs=2, devices=devices, mode=mode
    )
    assert_trees_close(stacking.unstack(states, 0).params, ref_state.params, atol=1e-5)
    assert int(np.ravel(states.step)[0]) == int(ref_state.step) == 20
    # Each example's margins summed over the epoch: the same batches, in the same order.
    ref_epoch0 = np.zeros(640)
    order = ip.epoch_permutation(member.keys[2], 0, 640)[:640]
    np.add.at(ref_epoch0, order, ref_margins[:640])
    np.testing.assert_allclose(metrics[0]["margin_sum"][0], ref_epoch0, atol=1e-4)
    np.testing.assert_array_equal(metrics[0]["margin_count"][0], np.ones(640))
    np.testing.assert_array_equal(metrics[1]["finite"], np.ones((1, 10)))
    assert metrics[1]["count"][0] == 640


@pytest.mark.slow
def test_one_device_and_eight_devices_agree(digits):
    split, mean, std = digits
    member = make_member(split, np.arange(512), seed=1, gamma=1.0)
    states = [
        device_epochs(
            split,
            mean,
            std,
            [member],
            model_name="small_cnn",
            epochs=1,
            devices=jax.local_devices()[:n],
        )[0]
        for n in (1, 8)
    ]
    assert_trees_close(states[0].params, states[1].params, atol=1e-5)


@pytest.mark.parametrize(
    ("model_name", "vectorize"),
    [("small_cnn", None), ("resnet_tiny", None), ("small_cnn", True), ("resnet_tiny", True)],
)
@pytest.mark.slow
def test_a_stack_trains_each_member_as_if_alone(digits, model_name, vectorize):
    """Three members with their own rows (K-fold style), keys and gamma: the stack's weights
    equal each member trained alone by the streaming loop (BatchNorm statistics included),
    whether the members run in turn (CPU's default) or vmapped (accelerators')."""
    split, mean, std = digits
    n = 960
    fold_of = np.arange(n) % 3
    members = [
        make_member(
            split,
            np.flatnonzero(fold_of != k),
            seed=10 + k,
            gamma=[0.0, 1.0, 2.0][k],
            tag=f"fold{k}",
        )
        for k in range(3)
    ]
    devices = jax.local_devices()[:4]
    states, metrics = device_epochs(
        split, mean, std, members, model_name=model_name, epochs=1, devices=devices,
        vectorize=vectorize,
    )  # fmt: skip
    chex.assert_tree_shape_prefix(states.params, (3,))
    for k, member in enumerate(members):
        sums = {}
        alone, _ = streaming_epochs(
            split, mean, std, member, model_name=model_name, epochs=1, devices=devices, sums=sums
        )
        # Each member's epoch metrics are its own ([M, ...] in member order).
        for name in programs.SUMMED:
            np.testing.assert_allclose(metrics[0][name][k], sums[name], rtol=2e-5, err_msg=name)
        np.testing.assert_array_equal(metrics[0]["finite"][k], sums["finite"])
        stacked = stacking.unstack(states, k)
        assert_trees_close(stacked.params, alone.params, atol=2e-5)
        assert_trees_close(stacked.batch_stats, alone.batch_stats, atol=2e-5)
        # Margins are recorded by position in the member's own rows, each once per epoch.
        np.testing.assert_array_equal(metrics[0]["margin_count"][k], np.ones(640))
    # Members really differ: different rows, keys and losses give different weights.
    p = [np.asarray(jax.tree.leaves(stacking.unstack(states, k).params)[0]) for k in range(3)]
    assert not np.allclose(p[0], p[1]) and not np.allclose(p[1], p[2])


@pytest.mark.slow
def test_stacked_evaluation_is_every_member_on_every_row_in_canonical_order(digits):
    split, mean, std = digits
    members = [make_member(split, np.arange(512), seed=s, gamma=1.0) for s in (0, 1)]
    devices = jax.local_devices()[:8]
    states, _ = device_epochs(
        split, mean, std, members, model_name="mlp", epochs=1, devices=devices
    )
    _, config = setting(split, mean, std, "mlp", 8)
    mesh = parallel.data_mesh(devices)
    eval_step = functools.partial(step_lib.eval_step, config=config, mean=mean, std=std)
    program = programs.evaluate_program(eval_step, mesh, "pmap", batch_size=96)
    num_rows = 500  # Not a multiple of the eval batch: the last batch is padded, then cut.
    images = split.images[:num_rows]
    labels = np.stack([split.labels[:num_rows], (split.labels[:num_rows] + 1) % 10])
    hparams = stacking.stacked_hparams(members)
    out = jax.device_get(program(states, jnp.asarray(images), jnp.asarray(labels), hparams))
    chex.assert_shape(out["logits"], (2, num_rows, 10))
    chex.assert_shape([out["p_t"], out["pred"], out["margin"]], (2, num_rows))
    lone_eval = parallel.parallelize(eval_step, mesh, "pmap", collective=False)
    for m in range(2):
        state = stacking.unstack(states, m)
        expected = engines.evaluate(
            lone_eval, state, images, labels[m], stacking.unstack(hparams, m), mesh=mesh,
            batch_size=96,
        )  # fmt: skip
        for name in ("logits", "p_t", "probs", "margin"):
            np.testing.assert_allclose(out[name][m], expected[name], atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(out["pred"][m], expected["pred"])
    # Each row from one member only (K-fold's out-of-sample rows), assembled on the devices:
    # member 0 holds 150 rows, member 1 300 (padded with the out-of-range row 500), and rows
    # 0, 10, ..., 490 no member (they come out zero), on the CPU's loop and with vmap.
    member_of_row = (np.arange(num_rows) % 3 != 0).astype(np.int32)
    member_of_row[::10] = -1
    rows = stacking.held_out_rows(member_of_row, 2)
    widths = [(member_of_row == m).sum() for m in range(2)]
    chex.assert_shape(rows, (2, max(widths)))
    assert set(rows[0, : widths[0]]) == set(np.flatnonzero(member_of_row == 0))
    assert (rows[0, widths[0] :] == num_rows).all()
    # On CPU one member at a time (pmap and shard_map), and vmapped as on accelerators.
    for vectorize, mode in [(False, "pmap"), (False, "shard_map"), (True, "pmap")]:
        held_out, per_member = (
            programs.evaluate_program(
                eval_step, mesh, mode, batch_size=96, rows=kind, vectorize=vectorize
            )
            for kind in ("held_out", "per_member")
        )
        args = (states, jnp.asarray(images), jnp.asarray(labels), hparams, jnp.asarray(rows))
        picked = jax.device_get(held_out(*args))
        # Unscattered: member m's outputs on rows[m], in that order (padding evaluates row N-1).
        own = jax.device_get(per_member(*args))
        chex.assert_shape(own["logits"], (2, rows.shape[1], 10))
        for m in range(2):
            mine = rows[m, : widths[m]]
            np.testing.assert_allclose(own["p_t"][m, : widths[m]], out["p_t"][m][mine], atol=1e-6)
            np.testing.assert_array_equal(own["pred"][m, : widths[m]], out["pred"][m][mine])
        chex.assert_shape(picked["logits"], (num_rows, 10))
        for name in ("logits", "probs", "p_t", "margin", "pred", "weight", "loss"):
            shape = (-1, *[1] * (out[name].ndim - 2))
            expected = np.where((member_of_row == 0).reshape(shape), out[name][0], out[name][1])
            expected = np.where((member_of_row == -1).reshape(shape), 0, expected)
            np.testing.assert_allclose(picked[name], expected, atol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match=r"members \[1\] hold no rows"):
        stacking.held_out_rows(np.zeros(4, np.int32), 2)
    with pytest.raises(ValueError, match="Unknown evaluation 'some'; choose from all, per_member"):
        programs.evaluate_program(eval_step, mesh, "pmap", batch_size=96, rows="some")


def test_members_must_name_the_same_hyperparameters(digits):
    split, _, _ = digits
    a = make_member(split, np.arange(10), seed=0, gamma=1.0)
    b = stacking.Member(labels=split.labels, rows=np.arange(10), keys=a.keys, hparams={"q": 1})
    with pytest.raises(ValueError, match="different hyperparameters"):
        stacking.stacked_hparams([a, b])
