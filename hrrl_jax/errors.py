"""The base classes that separate a user's mistake (one line, exit code 1) from a bug (a traceback); jax-free."""


class UserError(Exception):
    """An error in what the user gave (config, data, checkpoint): launch.py prints it as one line.

    The message says what was wrong, the value seen and what to do; no traceback is needed to act on it.
    """


class ConfigError(UserError, ValueError):
    """A config key or value that cannot work; the message starts with the key, `config.a.b=value: ...`.

    Also a `ValueError`, so code that caught the checks' former `ValueError`s keeps working.
    """


class DataError(UserError, ValueError):
    """A data set, split or class selection that cannot be read as asked (unknown name, bad file, bad label)."""
