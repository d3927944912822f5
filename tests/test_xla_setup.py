"""XLA flags set before JAX starts: which are added where, and what the user set is kept."""

from __future__ import annotations

import pytest

from robust_losses_jax import xla_setup


def test_cpu_only_host_gets_fast_compile_flag():
    flags = xla_setup.configure_cpu(environ={"JAX_PLATFORMS": "cpu"}).split()
    assert xla_setup.NO_YNN_FUSIONS in flags
    assert xla_setup.FAST_CPU_COMPILE in flags


@pytest.mark.parametrize("platforms", ["cuda", "tpu", "cpu,cuda", "rocm"])
def test_accelerator_hosts_keep_llvm_level(platforms):
    flags = xla_setup.configure_cpu(environ={"JAX_PLATFORMS": platforms}).split()
    assert flags == [xla_setup.NO_YNN_FUSIONS]
    assert not xla_setup.cpu_only({"JAX_PLATFORMS": platforms})


def test_user_flags_win_and_are_kept():
    environ = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=3 --foo=1"}
    flags = xla_setup.configure_cpu(num_devices=4, environ=environ).split()
    assert flags[:2] == ["--xla_backend_optimization_level=3", "--foo=1"]
    assert xla_setup.FAST_CPU_COMPILE not in flags
    assert "--xla_force_host_platform_device_count=4" in flags
    # Idempotent: configuring twice adds nothing.
    assert xla_setup.configure_cpu(num_devices=4, environ=environ).split() == flags


def test_bad_device_count_is_named():
    with pytest.raises(ValueError, match="num_devices 0"):
        xla_setup.cpu_flags(0)


def test_without_jax_platforms_installed_plugins_decide(monkeypatch):
    """Unset JAX_PLATFORMS: an accelerator plugin (entry point or package) rules out CPU only."""
    metadata, util = xla_setup.importlib.metadata, xla_setup.importlib.util
    monkeypatch.setattr(util, "find_spec", lambda name: None)
    monkeypatch.setattr(metadata, "entry_points", lambda group: [])
    assert xla_setup.cpu_only({})
    monkeypatch.setattr(metadata, "entry_points", lambda group: ["cuda"] * (group == "jax_plugins"))
    assert not xla_setup.cpu_only({})
    monkeypatch.setattr(metadata, "entry_points", lambda group: [])
    monkeypatch.setattr(util, "find_spec", lambda name: object() if name == "libtpu" else None)
    assert not xla_setup.cpu_only({})
    assert xla_setup.FAST_CPU_COMPILE not in xla_setup.configure_cpu(environ={})
