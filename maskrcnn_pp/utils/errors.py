"""User mistakes become one clear line and exit code 2, never a traceback."""
from __future__ import annotations

import functools
import sys
from typing import Callable


class UserError(Exception):
    """Bad input from the user: a file, a flag or a config key. The message says which."""


def exit_on_user_error(main: Callable) -> Callable:
    """Wrap a CLI ``main`` so a :class:`UserError` prints ``error: ...`` and exits 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
