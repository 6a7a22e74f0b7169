"""Build a folder beside its target and publish it in one rename, so readers never see half of it.

``staged_folder(target)`` yields an empty hidden folder ``.<name>.tmp-<pid>-XXXX`` next to
``target`` and deletes it if the block fails. ``publish()`` moves it into place: a no-replace
rename when ``target`` is new, an atomic exchange of the two folders (Linux ``renameat2``)
when replacing, and on systems without ``renameat2`` rename-old-away / rename-new-in / delete
old. A process killed at any point leaves ``target`` either absent, as it was, or complete;
its hidden leftovers are removed by the next ``staged_folder()`` for the same target. A full disk
while staging or publishing is raised as ``OSError(ENOSPC)`` naming ``target``.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

MARKER = ".owl-output"  # in every folder publish() writes; --overwrite replaces only folders holding it
KILL_ENV = "OWL_KILL_AT"  # crash tests: SIGKILL this process at the named stage
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(source: Path, destination: Path, flags: int) -> bool:
    """``renameat2(2)``; False when the system or file system does not offer it."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(destination))


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def kill_point(stage: str) -> None:
    """SIGKILL this process if ``$OWL_KILL_AT`` names ``stage`` (crash tests; a no-op otherwise)."""
    if os.environ.get(KILL_ENV) == stage:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _writable_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_destination(target: str | os.PathLike, *, inputs: tuple[str | os.PathLike, ...] = (),
                      overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """Refuse a destination before any work is done; return it as an absolute path.

    Allowed: an absent path whose nearest existing parent is a writable folder, an empty folder,
    or (with ``overwrite``) a folder holding ``MARKER``. Refused: the working directory, an input
    or a folder holding one, a file, a non-empty folder without ``overwrite``, a folder owl did not
    write (no ``MARKER``) even with ``overwrite``.

    Raises:
        ValueError, FileExistsError, NotADirectoryError, PermissionError: naming the path and the fix.
    """
    target = Path(target).absolute()
    resolved = target.resolve()
    protected = [Path.cwd().resolve()] + [Path(p).resolve() for p in inputs if p is not None and Path(p).exists()]
    for other in protected:
        if resolved == other or resolved in other.parents:
            what = "the working directory" if other == protected[0] else f"the input {other}"
            raise ValueError(f"output {target} is or contains {what}; choose a new folder (e.g. {target}/out)")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise NotADirectoryError(f"output {target} exists and is not a folder; remove it or choose another output")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output {target} exists and is not empty; pass {flag} to replace it "
                                  "or choose another output")
        if not (target / MARKER).is_file():
            raise FileExistsError(f"output {target} was not written by owl (no {MARKER} marker), so {flag} will not "
                                  "replace it; remove it yourself or choose another output")
    anchor = _writable_ancestor(target.parent)
    if not anchor.is_dir():
        raise NotADirectoryError(f"output {target}: {anchor} is not a folder; choose another output")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise PermissionError(f"output {target}: {anchor} is not writable; choose a writable output folder")
    return target


def remove_stale(target: Path) -> None:
    """Delete hidden staging folders of ``target`` left by processes that no longer run."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(\d+)-")
    if not target.parent.is_dir():
        return
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not _pid_alive(int(match[2])):
            logger.info("removing %s, left by an interrupted export", entry)
            shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def staged_folder(target: str | os.PathLike) -> Iterator[Path]:
    """An empty hidden folder beside ``target``, removed unless it was published.

    Args:
        target: the folder that will eventually be published.

    Returns:
        A context manager yielding the staging folder's path.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        kill_point("staging-created")
        yield staging
    except Exception as error:
        if disk_full(error):  # name the output, not a hidden staging file (safetensors' Rust errors name none)
            raise full_disk_error(target) from error
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def disk_full(error: BaseException) -> bool:
    """ENOSPC, raised as an OSError or inside another library's error text (safetensors: 'os error 28')."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    text = str(error)
    return "os error 28" in text or os.strerror(errno.ENOSPC) in text


def full_disk_error(path: str | os.PathLike) -> OSError:
    """The ``OSError(ENOSPC)`` naming ``path`` that ``owl_plugin.errors.describe`` turns into one line."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def publish(staging: Path, target: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Move a complete staging folder to ``target`` atomically.

    Args:
        staging: the folder from ``staged_folder()``, fully written.
        target: destination path.
        overwrite: replace an existing ``target``; without it an existing target is an error.

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is False.
        NotADirectoryError: ``target`` exists and is not a folder.
    """
    target = Path(target).absolute()
    kill_point("files-written")
    (staging / MARKER).write_text(f"written by owl-plugin (pid {os.getpid()})\n")
    mask = _umask()  # temporary files are private (0600/0700); the published folder gets the usual modes
    for path in staging.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            path.chmod(0o777 & ~mask)
    staging.chmod(0o777 & ~mask)
    _fsync_dir(staging)
    kill_point("fsynced")
    exists_message = (f"{target} already exists (another run may have published it first); pass --overwrite "
                      "to replace it")
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        try:  # an empty folder holds nothing to lose: take its place with the no-replace rename below
            target.rmdir()
        except OSError:
            pass
    if not target.exists() and not target.is_symlink():
        try:
            renamed = _renameat2(staging, target, _RENAME_NOREPLACE)
        except FileExistsError:  # created by someone else meanwhile
            raise FileExistsError(exists_message) from None
        if not renamed:
            if target.exists():
                raise FileExistsError(exists_message)
            os.rename(staging, target)
    elif not overwrite:
        raise FileExistsError(exists_message)
    elif not target.is_dir() or target.is_symlink():
        raise NotADirectoryError(f"{target} exists and is not a folder; remove it or choose another output")
    elif not (target / MARKER).is_file():
        raise FileExistsError(f"{target} was not written by owl (no {MARKER} marker); it is left as it was")
    elif _renameat2(staging, target, _RENAME_EXCHANGE):
        shutil.rmtree(staging)  # now holds the previous target
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
        os.rename(target, old / target.name)
        try:
            os.rename(staging, target)
        except BaseException:  # put the previous output back: the next run would delete it as a stale leftover
            os.rename(old / target.name, target)
            raise
        shutil.rmtree(old)
    kill_point("renamed")
    _fsync_dir(target.parent)
