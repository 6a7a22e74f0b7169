"""How the ``owl`` commands end on an error: one line naming the value and the fix, exit 2.

User-caused errors (bad values, missing / corrupt / unwritable files, a full disk, an existing
output, a safetensors file that does not parse) print ``owl COMMAND: error: <message>`` and
return 2; ``-v`` prints the traceback first. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
import traceback
from collections.abc import Callable

USER_EXIT = 2
_USER_TYPES = (ValueError, OSError, LookupError)  # OSError: missing, exists, permission, ENOSPC, EROFS, ...
_USER_NAMES = {"SafetensorError", "HubError", "HFValidationError", "RepositoryNotFoundError", "ValidationError",
               "EntryNotFoundError", "LocalEntryNotFoundError", "DatasetNotFoundError"}


def is_user_error(error: BaseException) -> bool:
    return isinstance(error, _USER_TYPES) or any(t.__name__ in _USER_NAMES for t in type(error).__mro__)


def describe(error: BaseException) -> str:
    """One line: the error's own message, plus the fix for the OS errors that have one."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        where = f" writing {error.filename}" if error.filename else ""
        return f"no space left on the device{where}; free some space or choose an output on another disk"
    if isinstance(error, OSError) and error.errno == errno.EROFS:
        return f"{error.filename or 'the output'} is on a read-only file system; choose a writable output"
    if isinstance(error, PermissionError) and error.filename and not str(error).startswith("output"):
        return f"permission denied: {error.filename}; choose a path you can write (or read)"
    text = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError):
        text = f"missing key {text}"
    return " ".join(text.split())  # one line


def run(func: Callable, args, *, command: str, verbose: bool) -> int:
    """``func(args)``, with user-caused errors turned into one line on stderr and exit code 2."""
    try:
        return func(args)
    except KeyboardInterrupt:
        print(f"owl {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if not is_user_error(error):
            raise
        if verbose:
            traceback.print_exc()
        hint = "" if verbose else " (-v shows the traceback)"
        print(f"owl {command}: error: {describe(error)}{hint}", file=sys.stderr)
        return USER_EXIT
