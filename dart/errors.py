"""The project's user-facing errors: each names the bad value and the allowed ones, and is printed by the entry
points as one clear message (no stack trace)."""
from __future__ import annotations

import sys
from typing import Callable


class DartError(Exception):
    """An error the user can fix from the command line or config; printed without a traceback."""


class ConfigError(DartError, ValueError):
    """A configuration value is out of range or unknown."""


class UnavailableError(DartError, RuntimeError):
    """Something the run needs (a model, a data set, an API key, an optional package) cannot be had here."""


def check_integer(what: str, value, low: int) -> None:
    """A ConfigError "<what>=<value> must be an integer >= <low>" unless value is an int (not a bool) >= low."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{what}={value!r} must be an integer >= {low}")


def choice_error(what: str, value, allowed) -> ConfigError:
    allowed = ", ".join(str(a) for a in allowed)
    return ConfigError(f"{what}={value!r} is not supported; allowed: {allowed}")


def exit_status(fn: Callable[[], object], code: int = 2) -> int:
    """An entry point's exit status: 0 once `fn()` returns; a DartError it raises is one line on stderr,
    `error: <message>`, and exit status `code`."""
    try:
        fn()
    except DartError as e:
        print(f"error: {e}", file=sys.stderr)
        return code
    return 0
