"""Entry point: `python launch.py --config configs/<experiment>.py --workdir DIR [--config.key=value ...]`.

Trains and evaluates one run, or, for a config with a `compare` section, the whole comparison experiment (with
`compare.arms` set: the selection protocol, hrrl_jax/experiments/protocol.py).
The config is validated first, before jax is imported or any data read; a mistake in the user's input
(`hrrl_jax.errors.UserError`: config, data, checkpoint) is one `error: ...` line and exit code 1.
"""

import os
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


def main(argv: list[str]) -> int:
    config = _CONFIG.value
    try:
        validate_config(config)  # A bad value fails here in a second, naming its key.
    except UserError as error:
        return _report(error)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import jax

    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.

    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    if _CACHE.value:
        jax.config.update("jax_compilation_cache_dir", _CACHE.value)

    from hrrl_jax.train.loop import train_and_evaluate

    try:
        if "compare" in config:
            from hrrl_jax.experiments.compare import ComparisonInterrupted, run_comparison
            from hrrl_jax.experiments.protocol import run_protocol

            try:
                (run_protocol if config.compare.arms else run_comparison)(config, _WORKDIR.value)
            except ComparisonInterrupted as interruption:
                print(interruption, file=sys.stderr)
        else:
            train_and_evaluate(config, _WORKDIR.value)
    except (UserError, FileNotFoundError) as error:  # Checkpoint, non-finite loss and data errors are UserErrors.
        return _report(error)
    return 0


def _report(error: Exception) -> int:
    """Prints the user's mistake as `error: <message>` on stderr, without a traceback; the exit code."""
    print(f"error: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    app.run(main)
