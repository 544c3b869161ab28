"""User mistakes become one clear line and exit code 2, never a traceback.

Every tool's ``main`` is wrapped by :func:`exit_on_user_error`, the one error boundary: a
:class:`UserError` (or a library error that can only mean bad input, see
:func:`as_user_error`) prints ``error: ...`` on one line and exits 2; anything else keeps
its traceback, because it is a bug to report.
"""
from __future__ import annotations

import errno
import functools
import math
import sys
from typing import Callable, Optional


class UserError(Exception):
    """Bad input from the user: a file, a flag or a config key. The message says which."""


_USER_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM,
                errno.EROFS, errno.ENOSPC, errno.EEXIST}


def as_user_error(err: BaseException) -> Optional[UserError]:
    """The :class:`UserError` that a library error stands for, or None if it is not one.

    Only a file-system refusal that names its path is translated (missing, not a folder,
    no permission, read-only or full disk): the fix is the user's, not the code's.
    """
    if isinstance(err, UserError):
        return err
    if (isinstance(err, OSError) and err.filename is not None
            and err.errno in _USER_ERRNOS):
        return UserError(f"{err.filename}: {err.strerror}")
    return None


def one_line(message: object) -> str:
    """``message`` on a single line, so the error boundary prints exactly one.

    A :class:`UserError` raised in a DataLoader worker reaches the main process re-raised
    by torch with the worker's traceback as its message; its last line is the message.
    """
    text = str(message)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


def exit_on_user_error(main: Callable) -> Callable:
    """Wrap a CLI ``main`` so a user mistake prints ``error: ...`` on one line and exits 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (UserError, OSError) as err:
            user_error = as_user_error(err)
            if user_error is None:
                raise
            print(f"error: {one_line(user_error)}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def check_finite(value: float, name: str) -> float:
    """``value`` if it is a finite number; otherwise a :class:`UserError` naming ``name``."""
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value}")
    return value
