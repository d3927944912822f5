"""XLA flags for CPU runs, set through ``XLA_FLAGS`` before JAX starts its backends.

XLA reads ``XLA_FLAGS`` once, when the first JAX computation initialises the backends, so
:func:`configure_cpu` must run before that (entry points call it first thing; importing ``jax``
alone does not initialise anything).

Why: on jaxlib 0.10-0.12, XLA:CPU hands convolutions to YNNPACK fusions, which are ~5x slower
than XLA's own convolution once the output no longer fits in cache (the small CNN's 32->64
layer at batch 128: 139 ms against 28 ms on the 2-core CI machine, ``benchmarks/bench_layers.py``).
``--xla_cpu_experimental_ynn_fusion_type=`` (an empty list) turns those fusions off; it only
affects the CPU backend.

Where the CPU is the only backend (no accelerator plugin installed, or ``JAX_PLATFORMS=cpu``),
``--xla_backend_optimization_level=1`` also lowers LLVM's effort on XLA:CPU's generated code:
compilation takes about half as long (the small CNN's epoch program 6.9 -> 3.6 s, ResNet-18's
15.3 -> 11.3 s, a model's initialisation 1.8 -> 0.6 s) and the programs run as fast (the heavy
work is in library convolutions and matrix products, which the level does not touch;
``python -m benchmarks.bench_train`` shows it). It is left out where an accelerator may be used,
since the same option drives the GPU backends' LLVM.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

NO_YNN_FUSIONS = "--xla_cpu_experimental_ynn_fusion_type="
FAST_CPU_COMPILE = "--xla_backend_optimization_level=1"
# Packages that bring an accelerator backend without registering a ``jax_plugins`` entry point.
_ACCELERATOR_PACKAGES = ("libtpu", "jax_plugins")


def cpu_only(environ: dict | None = None) -> bool:
    """Whether JAX can only run on the CPU here: ``JAX_PLATFORMS`` names only ``cpu``, or (unset)
    no accelerator plugin is installed."""
    environ = os.environ if environ is None else environ
    platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return set(platforms) == {"cpu"}
    if importlib.metadata.entry_points(group="jax_plugins"):
        return False
    return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PACKAGES)


def cpu_flags(num_devices: int | None = None, *, fast_compile: bool = False) -> list[str]:
    """The flags :func:`configure_cpu` adds: YNNPACK fusions off, with ``fast_compile`` LLVM
    optimisation level 1 (see the module's docstring), optionally N host devices."""
    flags = [NO_YNN_FUSIONS]
    if fast_compile:
        flags.append(FAST_CPU_COMPILE)
    if num_devices is not None:
        if num_devices < 1:
            raise ValueError(f"num_devices {num_devices} must be >= 1.")
        flags.append(f"--xla_force_host_platform_device_count={num_devices}")
    return flags


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-process (multi-host) run: ``jax.distributed.initialize``, before any JAX work.

    With no arguments, JAX reads the cluster from the environment (TPU pod slices, SLURM,
    Open MPI). On CPU, cross-process collectives go through gloo.
    """
    import jax  # Here, not at the top: the entry points import this module before JAX may load.

    given = [x is not None for x in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError(
            "multi-host needs --coordinator-address, --num-processes and --process-id together "
            "(or --distributed alone on a TPU pod slice)."
        )
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} must be in [0, {num_processes}).")
    if "cpu" in os.environ.get("JAX_PLATFORMS", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def default_compilation_cache() -> str:
    """``$XDG_CACHE_HOME/robust_losses_jax/jax`` (``~/.cache/...`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "robust_losses_jax", "jax")


def enable_compilation_cache(path: str | None) -> None:
    """JAX's persistent compilation cache in ``path`` (None or ``""``: leave it off).

    Programs are keyed by their compiled text, so the K folds of a sequential CL run, the cells
    of a sweep and re-runs of an experiment load the epoch programs compiled before instead of
    compiling them again (XLA:CPU takes seconds per program). Only the user's own processes may
    write there: JAX trusts what it loads from the cache.
    """
    if not path:
        return
    import jax  # Here, not at the top: the entry points import this module before JAX may load.

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def configure_cpu(num_devices: int | None = None, environ: dict | None = None) -> str:
    """Add :func:`cpu_flags` to ``XLA_FLAGS`` (``os.environ`` by default), keeping what is set.

    The fast-compile flag only where :func:`cpu_only`. A flag already present (with any value)
    is left as the user set it. Returns the new value.
    """
    environ = os.environ if environ is None else environ
    current = environ.get("XLA_FLAGS", "").split()
    present = {flag.split("=", 1)[0] for flag in current}
    wanted = cpu_flags(num_devices, fast_compile=cpu_only(environ))
    added = [flag for flag in wanted if flag.split("=", 1)[0] not in present]
    environ["XLA_FLAGS"] = " ".join(current + added)
    return environ["XLA_FLAGS"]
