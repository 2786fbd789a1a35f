"""Entry point: `python launch.py --config configs/<experiment>.py --workdir DIR [--config.key=value ...]`.

Trains and evaluates one run, or, for a config with a `compare` section, the whole comparison experiment (with
`compare.arms` set: the selection protocol, hrrl_jax/experiments/protocol.py).
The config is validated first, before jax is imported or any data read; a mistake in the user's input
(`hrrl_jax.errors.UserError`: config, data, checkpoint, work directory; an unknown `--config.` key) is one
`error: ...` line and exit code 1. Exit codes: 0 finished, 1 a user error, 75 (EX_TEMPFAIL) stopped by
SIGTERM/SIGINT or `stop_at_step` before the end, resumable by the same command (requeue on it).
"""

import difflib
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from hrrl_jax.config_checks import validate_config
from hrrl_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file with get_config().")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_CACHE = flags.DEFINE_string(
    "compilation_cache_dir",
    os.path.join(os.path.expanduser("~"), ".cache", "hrrl_jax", "xla"),
    "Persistent XLA compilation cache ('' turns it off).",
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host TPU/GPU: same command on every host)."
)
flags.mark_flags_as_required(["config", "workdir"])

EXIT_FINISHED, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 75


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a mistake in a `--config.` override as one `error:` line instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        message = str(error)
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # ml_collections on an unknown key.
        message = _override_error(argv, error)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _override_error(argv: list[str], error: Exception) -> str:
    """`--config.a.b=v: config has no key 'b'; did you mean 'c'?` for the override that named an unknown key."""
    text = str(error.args[0] if error.args else error)
    match = re.search(r"'([^']+)'", text.replace("\\'", "'"))
    unknown = match.group(1) if match else text
    overrides = [arg for arg in argv if arg.startswith("--config.")]
    flag = next((arg for arg in overrides if unknown in arg.split("=")[0].split(".")), None)
    if flag is None:
        return f"a --config override failed: {type(error).__name__}: {' '.join(text.split())}"
    path = flag.split("=")[0][len("--config.") :].split(".")
    parent = path[: path.index(unknown)]
    try:
        known = _keys_under(parent)
    except Exception:  # The config file itself fails: its own error follows when absl loads it.
        known = []
    suggestions = difflib.get_close_matches(unknown, known, n=1)
    hint = f"; did you mean {'.'.join([*parent, suggestions[0]])!r}?" if suggestions else "."
    where = f"config.{'.'.join(parent)}" if parent else "config"
    return f"{flag}: {where} has no key {unknown!r}{hint} Known keys there: {', '.join(sorted(known))}."


def _keys_under(parent: list[str]) -> list[str]:
    """The keys of the config section `parent` of the config file given with --config (read without overrides)."""
    config_path = next((arg.split("=", 1)[1] for arg in sys.argv if arg.startswith("--config=")), None)
    if config_path is None and "--config" in sys.argv:
        config_path = sys.argv[sys.argv.index("--config") + 1]
    if config_path is None:
        return []
    namespace: dict = {}
    with open(config_path) as file:
        exec(compile(file.read(), config_path, "exec"), namespace)  # The config file, as config_flags loads it.
    section = namespace["get_config"]()
    for key in parent:
        section = section[key]
    return list(section.keys())


def main(argv: list[str]) -> int:
    config = _CONFIG.value
    try:
        validate_config(config)  # A bad value fails here in a second, naming its key.
    except UserError as error:
        return _report(error)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import jax

    # Orbax logs every save at INFO, and a failed background save as tracebacks from its threads; the trainer
    # reports every save failure itself in one line (hrrl_jax.workdir.checkpoints), so only fatal logs pass.
    logging.set_verbosity(logging.FATAL)

    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    if _CACHE.value:
        jax.config.update("jax_compilation_cache_dir", _CACHE.value)

    from hrrl_jax.train.loop import train_and_evaluate
    from hrrl_jax.train.preemption import RunInterrupted

    try:
        if "compare" in config:
            from hrrl_jax.experiments.compare import ComparisonInterrupted, run_comparison
            from hrrl_jax.experiments.protocol import run_protocol

            try:
                (run_protocol if config.compare.arms else run_comparison)(config, _WORKDIR.value)
            except ComparisonInterrupted as interruption:
                print(interruption, file=sys.stderr)
                return EXIT_INTERRUPTED
        elif train_and_evaluate(config, _WORKDIR.value).get("interrupted"):
            return EXIT_INTERRUPTED
    except (UserError, FileNotFoundError) as error:  # Checkpoint, non-finite loss and data errors are UserErrors.
        return _report(error)
    except RunInterrupted as interruption:  # A signal during start-up: nothing to save.
        print(interruption, file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_FINISHED


def _report(error: Exception) -> int:
    """Prints the user's mistake as `error: <message>` on stderr, without a traceback; the exit code."""
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
