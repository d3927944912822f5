"""What the entry points share: a quiet start-up, the flags built from ``Config``, presets,
one-line errors and ``--version``.

Every field of :class:`robust_losses_jax.config.Config` declared with ``config.flag`` is a flag:
its name (``--noise-rate`` for ``noise_rate``, or the metadata's ``flag``), type, default, help,
group and allowed values come from the field. The loss's hyperparameters are the flags of
:func:`loss_flags`, which fill ``loss_hparams``; ``--tau=auto`` sets ``auto_tau`` instead.

Values are layered: Config's defaults < an entry point's own (``parser.set_defaults``) <
``--preset`` < the flags typed (a flag typed wins even where it equals a default).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.abc
import importlib.util
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from robust_losses_jax.config import Config


def loss_flags() -> tuple[str, ...]:
    """The loss hyperparameter flags: every registered loss's numeric hyperparameters (a
    plugin's too), in order of first appearance."""
    from robust_losses_jax import losses

    names: list[str] = []
    for spec in losses.registered_losses():
        names += [k for k, v in spec.hparams.items() if not isinstance(v, bool) and k not in names]
    return tuple(names)


AUTO = "auto"  # --tau=auto: auto_tau.
# Set (unless already set) before TensorFlow or XLA starts: their C++ start-up logs.
QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    # TensorFlow only reads data here, so its oneDNN kernels buy nothing; off, it does not
    # announce them (nor print absl's "All log messages before absl::InitializeLog()" first).
    "TF_ENABLE_ONEDNN_OPTS": "0",
}


# --------------------------------------------------------------------------------------------------
# A quiet start-up.
# --------------------------------------------------------------------------------------------------


def wants_verbose(argv: Sequence[str]) -> bool:
    """Whether ``argv`` holds ``--verbose`` (or a prefix argparse takes for it, ``--verb``...)."""
    return any(len(arg) >= len("--verb") and "--verbose".startswith(arg) for arg in argv)


def quiet_startup(argv: Sequence[str]) -> bool:
    """Silence TensorFlow's, absl's and XLA's start-up logs and tfds's progress bars, unless
    ``argv`` asks for ``--verbose``; returns whether it did.

    Entry points call it first: TensorFlow and XLA read the environment once, when they start.
    The training progress bar and the summary line are the entry points' own and stay.
    """
    if wants_verbose(argv):
        return False
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    from absl import logging as absl_logging

    # tfds's Python warnings, e.g. "Variant folder ... has no dataset_info.json" (a dataset
    # about to be prepared).
    absl_logging.set_verbosity(absl_logging.ERROR)
    after_import("tensorflow_datasets", _disable_progress_bar)
    return True


def _disable_progress_bar(tfds: types.ModuleType) -> None:
    tfds.disable_progress_bar()


def prepare_process(argv: Sequence[str]) -> None:
    """What an entry point's ``main`` does first, before JAX or TensorFlow start (both read the
    environment once): quiet their start-up logs unless ``argv`` asks for ``--verbose``
    (:func:`quiet_startup`), and set XLA:CPU's flags (``xla_setup.configure_cpu``)."""
    from robust_losses_jax import xla_setup

    quiet_startup(argv)
    xla_setup.configure_cpu()
    load_plugins(argv)


PLUGIN_HELP = (
    "import MODULE (importable: on PYTHONPATH or installed) before the flags are read, so the "
    "losses and detectors it registers are choices (docs/extending.md); repeatable"
)


def plugin_modules(argv: Sequence[str]) -> list[str]:
    """The modules ``--plugin=MODULE`` or ``--plugin MODULE`` name in ``argv``, in order."""
    names = []
    for i, arg in enumerate(argv):
        if arg.startswith("--plugin="):
            names.append(arg.partition("=")[2])
        elif arg == "--plugin" and i + 1 < len(argv):
            names.append(argv[i + 1])
    return names


def load_plugins(argv: Sequence[str]) -> None:
    """Import each ``--plugin`` module; one that cannot be imported is one ``error:`` line on
    stderr and exit code 2."""
    for name in plugin_modules(argv):
        try:
            importlib.import_module(name)
        except Exception as error:  # Whatever the user's module raises: one line, exit 2.
            message = " ".join(f"{type(error).__name__}: {error}".split())
            print(f"error: --plugin={name}: cannot import it ({message}).", file=sys.stderr)
            raise SystemExit(2) from None


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds one module with the other finders and has its loader call ``callback(module)`` once
    the module has run."""

    def __init__(self, name: str, callback: Callable[[types.ModuleType], None]):
        self.name, self.callback, self.done = name, callback, False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name or self.done:
            return None
        self.done = True  # Once; and the look-up below passes this finder by.
        spec = importlib.util.find_spec(fullname)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            try:
                run(module)
            finally:
                with contextlib.suppress(ValueError):  # Its work is done: out of the way.
                    sys.meta_path.remove(self)
            self.callback(module)

        spec.loader.exec_module = exec_module  # type: ignore[union-attr]
        return spec


def after_import(name: str, callback: Callable[[types.ModuleType], None]) -> None:
    """Call ``callback(module)`` when module ``name`` is imported (now, if it already is).

    tfds is imported deep in the data pipeline, only for datasets that need it, and importing it
    starts TensorFlow: imported up front, every run (and ``--help``) would wait for that.
    """
    if name in sys.modules:
        callback(sys.modules[name])
    elif not any(
        isinstance(finder, _AfterImport) and (finder.name, finder.callback) == (name, callback)
        for finder in sys.meta_path
    ):  # Asked twice before the import: one call is enough.
        sys.meta_path.insert(0, _AfterImport(name, callback))


def version_text() -> str:
    """What ``--version`` prints."""
    import robust_losses_jax

    return f"robust_losses_jax {robust_losses_jax.__version__}"


# --------------------------------------------------------------------------------------------------
# Parsers.
# --------------------------------------------------------------------------------------------------


class _Unset:
    """The default each flag gets while :class:`Parser` finds which flags were typed."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


def shown_default(action: argparse.Action) -> str:
    """A flag's default as ``--help`` shows it: what None means for it, bools as on/off."""
    value = action.default
    if value is None:
        return getattr(action, "none", None) or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return repr(value) if value == "" else str(value)


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` ending each flag's line with its allowed values and its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        # A BooleanOptionalAction given its help appends this; the default is shown below.
        text = (action.help or "").removesuffix(" (default: %(default)s)")
        if not action.option_strings or action.default is argparse.SUPPRESS:
            return text.replace("%", "%%")
        notes = []
        allowed = getattr(action, "allowed", None)
        if allowed:
            notes.append("one of: " + ", ".join(map(str, allowed)))
        # Flags such as --resume are off unless typed: nothing to say.
        if action.nargs != 0 or isinstance(action, argparse.BooleanOptionalAction):
            notes.append(f"default: {shown_default(action)}")
        text = f"{text} ({'; '.join(notes)})" if notes else text
        return text.replace("%", "%%")  # argparse formats the help with %.


def add_flag(
    container: Any,
    *names: str,
    help: str,
    allowed: Sequence[Any] | None = None,
    none: str | None = None,
    **kwargs: Any,
) -> argparse.Action:
    """``container.add_argument`` with what :class:`HelpFormatter` shows: ``allowed`` values
    (shown only; the config's ``validate`` checks them) and what a default of None means."""
    action = container.add_argument(*names, **kwargs)
    # Set afterwards: BooleanOptionalAction appends its own "(default: ...)" to a help given.
    action.help = help
    action.allowed = tuple(allowed) if allowed else None  # type: ignore[attr-defined]
    action.none = none  # type: ignore[attr-defined]
    return action


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...``, exit code 2), ``--help`` that shows each
    flag's default and allowed values, and :attr:`typed`: the dests the last parse found typed
    (a flag typed counts even where its value equals the default)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.typed: frozenset[str] = frozenset()

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {' '.join(message.split())}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        args = sys.argv[1:] if args is None else list(args)
        parsed, extras = super().parse_known_args(args, namespace)  # Bad flags and --help exit.
        self.typed = self._typed_dests(args)
        return self.resolve(parsed, self.typed), extras

    def _typed_dests(self, args: list[str]) -> frozenset[str]:
        """The dests ``args`` sets: parsed again with every default replaced by a marker."""
        saved = {a: a.default for a in self._actions if a.default is not argparse.SUPPRESS}
        try:
            for action in saved:
                action.default = _UNSET
            marked, _ = super().parse_known_args(args)
        finally:
            for action, default in saved.items():
                action.default = default
        return frozenset(a.dest for a in saved if getattr(marked, a.dest, _UNSET) is not _UNSET)

    def resolve(self, args: argparse.Namespace, typed: frozenset[str]) -> argparse.Namespace:
        """The parsed ``args`` completed (here: unchanged); ``typed``: the dests typed."""
        return args


class ConfigParser(Parser):
    """A :class:`Parser` with a flag for every ``Config`` field declared with ``config.flag``
    (in :attr:`groups`, by ``config.FLAG_GROUPS``) and the loss flags; a ``--preset`` settles
    the flags not typed."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.groups = add_config_flags(self)

    def flag(self, dest: str) -> argparse.Action:
        """The action that sets ``dest``."""
        return next(a for a in self._actions if a.dest == dest)

    def resolve(self, args: argparse.Namespace, typed: frozenset[str]) -> argparse.Namespace:
        from robust_losses_jax import config as config_lib

        try:
            values = config_lib.preset_values(args.preset)
        except ValueError as error:
            self.error(str(error))
        for dest, value in preset_dests(values, loss_typed="loss" in typed).items():
            if dest not in typed:
                setattr(args, dest, value)
        return args


def preset_dests(values: dict[str, Any], *, loss_typed: bool) -> dict[str, Any]:
    """A preset's settings as the parser's dests: ``loss_hparams`` as the loss flags,
    ``auto_tau`` as ``--tau=auto``. With ``--loss`` typed, the preset's hyperparameters (its own
    loss's) are left out."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name == "loss_hparams":
            out.update({} if loss_typed else value)
        elif name == "auto_tau":
            if value and not loss_typed:
                out["tau"] = AUTO
        else:
            out[name] = value
    return out


def flag_fields() -> list[dataclasses.Field]:
    """The ``Config`` fields that have a flag (declared with ``config.flag``)."""
    from robust_losses_jax import config as config_lib

    return [f for f in dataclasses.fields(config_lib.Config) if "group" in f.metadata]


def flag_name(field: dataclasses.Field) -> str:
    """``--noise-rate`` for ``noise_rate``; the metadata's ``flag`` where given."""
    return "--" + field.metadata.get("flag", field.name).replace("_", "-")


def _called(value: Any) -> Any:
    return value() if callable(value) else value


def _field_type(hint: Any, name: str) -> type:
    """``int`` for ``int`` or ``int | None``; a type no flag can read raises ``TypeError``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    kind = args[0] if isinstance(hint, types.UnionType) and len(args) == 1 else hint
    if kind not in (bool, int, float, str):
        raise TypeError(f"Config.{name}: a flag reads {hint}? give its flag() a parse function.")
    return kind


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` with its ``ValueError``/``OSError`` as argparse's one-line error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except (ValueError, OSError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def tau_value(text: str) -> float | str:
    """``--tau``: a number, or ``auto``."""
    if text == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: a number or 'auto'") from None


def loss_flag_help(name: str) -> str:
    """Which losses take hyperparameter ``name``, with their defaults."""
    from robust_losses_jax import losses

    names = sorted({losses.canonical_name(n) for n in losses.available_losses()})
    takers = [(n, losses.loss_hparams(n)[name]) for n in names if name in losses.loss_hparams(n)]
    text = "hyperparameter of " + ", ".join(f"{loss} ({value})" for loss, value in takers)
    if name == "tau":
        text += "; auto: cutoff's tau chosen after the delay from the estimated noise rate"
    return text


def registered_choices(registry: str) -> list[tuple[str, str]]:
    """``(name, one line)`` of everything a registry above config holds: ``detectors`` (the
    protocols', a plugin's too)."""
    from robust_losses_jax import protocols

    if registry != "detectors":
        raise KeyError(f"no registry {registry!r}")
    return [(d.name, d.description) for d in protocols.registered_detectors()]


def add_config_flags(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """A flag for every ``Config`` field declared with ``config.flag``, and the loss flags; the
    argument groups by name."""
    from robust_losses_jax import config as config_lib

    groups = {name: parser.add_argument_group(name) for name in config_lib.FLAG_GROUPS}
    # Parsed only to be accepted: prepare_process has imported every one (load_plugins).
    add_flag(parser, "--plugin", default=None, metavar="MODULE", help=PLUGIN_HELP)
    hints = typing.get_type_hints(config_lib.Config)
    for field in flag_fields():
        meta = field.metadata
        name = flag_name(field)
        kwargs: dict[str, Any] = {"dest": field.name, "default": field.default}
        if "parse" in meta:
            kwargs["type"] = _argparse_type(meta["parse"])
        elif _field_type(hints[field.name], field.name) is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _field_type(hints[field.name], field.name)
        if kwargs.get("action") is None:
            kwargs["metavar"] = name[2:].upper().replace("-", "_")
        container = parser if meta["group"] is None else groups[meta["group"]]
        help_text, allowed = _called(meta["help"]), _called(meta.get("choices"))
        if "registry" in meta:  # Choices registered above config: their names and lines.
            described = registered_choices(meta["registry"])
            allowed = [choice for choice, _ in described]
            help_text += ": " + "; ".join(f"{choice} ({line})" for choice, line in described)
        add_flag(container, name, help=help_text, allowed=allowed, none=meta.get("none"),
                 **kwargs)  # fmt: skip
    for name in loss_flags():
        add_flag(groups["loss"], f"--{name.replace('_', '-')}", dest=name, default=None,
                 type=tau_value if name == "tau" else float, metavar=name.upper(),
                 help=loss_flag_help(name), none="the loss's own")  # fmt: skip
    return groups


def config_from_args(args: argparse.Namespace) -> Config:
    """The ``Config`` of parsed flags: every field the namespace holds, ``loss_hparams`` from the
    loss flags given, ``auto_tau`` from ``--tau=auto``."""
    from robust_losses_jax import config as config_lib

    names = {f.name for f in dataclasses.fields(config_lib.Config)} - {"loss_hparams", "auto_tau"}
    hparams = {k: getattr(args, k) for k in loss_flags() if getattr(args, k, None) is not None}
    auto_tau = hparams.get("tau") == AUTO
    if auto_tau:
        del hparams["tau"]
    return config_lib.Config(
        **{name: getattr(args, name) for name in names if hasattr(args, name)},
        loss_hparams=hparams,
        auto_tau=auto_tau,
    )
