"""Tests for benchmarks/bench_roofline.py: its FLOP count and its table."""

import pytest

from benchmarks import bench_roofline, bench_train


def test_step_flops_are_three_forward_passes_less_the_first_layers_input_gradient():
    # The forward pass counted from the model's jaxpr; the step: forward, kernel gradients and
    # input gradients, except the first convolution's (its input is the data).
    forward = bench_train.forward_flops("small_cnn", (28, 28, 1), 128, "float32")
    conv1_input_grad = 2.0 * 128 * 26 * 26 * 32 * 9
    assert bench_roofline.step_flops() == pytest.approx(3 * forward - conv1_input_grad, rel=1e-9)
    assert bench_roofline.step_flops() == pytest.approx(9.16e9, rel=1e-3)


@pytest.mark.slow
def test_main_prints_the_rows_the_floor_and_the_ratio(capsys):
    bench_roofline.main(["--repeats=1", "--quick"])
    out = capsys.readouterr().out
    for row in ("matmul 2048^3", "conv 32->64 fwd+grads", "train step", "floor"):
        assert row in out
    ratio = out.strip().splitlines()
    ratio = [x for x in ratio if x.startswith("ratio train step vs its arithmetic floor")]
    assert 0 < float(ratio[0].split(": ")[1]) <= 1.5  # No step runs much past its floor.
