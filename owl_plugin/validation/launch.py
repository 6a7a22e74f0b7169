"""Run one engine runner as a subprocess with a time limit; keep its stderr; never leave a process behind.

The runner gets its own session (process group), so a timeout ends it *and* everything it
started (vLLM engine cores, ``api_server`` processes): SIGTERM to the group, then SIGKILL after
a grace period. After a normal exit the group is killed too, so no straggler outlives the run.
stdout and stderr go to ``runner.log`` in the engine's work folder (no pipe to fill up); its
tail is what a crash or timeout is reported with. While waiting, new lines of the log can be
handed to a callback (the suite shows each step a runner announces, so long runs are not silent).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

GRACE_SECONDS = 20.0
#: how often the log is read for new lines while the runner works
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Outcome:
    """How the runner process ended."""

    returncode: int | None
    timed_out: bool
    seconds: float
    log: Path

    def tail(self, lines: int = 40, chars: int = 4000) -> str:
        """The last lines of the runner's output (its own error, usually)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])[-chars:]


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class _LogFollower:
    """Hands every complete new line of a growing log file to ``on_line``."""

    def __init__(self, path: Path, on_line: Callable[[str], None] | None) -> None:
        self.path, self.on_line, self.offset, self.partial = path, on_line, 0, b""

    def poll(self) -> None:
        if self.on_line is None:
            return
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            self.on_line(line.decode(errors="replace").rstrip("\r"))


def _wait(process: subprocess.Popen, timeout: float, follower: _LogFollower) -> None:
    """``process.wait(timeout)``, reading the log every ``POLL_SECONDS`` meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            process.wait(timeout=max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))
            follower.poll()
            return
        except subprocess.TimeoutExpired:
            follower.poll()
            if time.monotonic() >= deadline:
                raise


def run_with_limit(command: Sequence[str], *, timeout: float, log: Path, env: Mapping[str, str] | None = None,
                   cwd: str | os.PathLike | None = None, on_line: Callable[[str], None] | None = None) -> Outcome:
    """Run ``command`` in its own process group for at most ``timeout`` seconds.

    ``on_line`` receives each line the runner writes, as it is written (within ``POLL_SECONDS``).

    Returns:
        The exit code (None when it had to be killed), whether it timed out, wall time and log path.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "wb") as sink:
        process = subprocess.Popen(list(command), stdout=sink, stderr=subprocess.STDOUT, env=dict(env or os.environ),
                                   cwd=cwd, start_new_session=True)
        pgid = process.pid  # start_new_session: the child leads its own group
        timed_out = False
        try:
            _wait(process, timeout, _LogFollower(log, on_line))
        except subprocess.TimeoutExpired:
            timed_out = True
            logger.error("%s exceeded its time limit of %.0f s; stopping it and its children", command[-3:], timeout)
            _kill_group(pgid, signal.SIGTERM)
            try:
                process.wait(timeout=GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _kill_group(pgid, signal.SIGKILL)
                process.wait()
        except BaseException:  # Ctrl-C in the orchestrator: take the runner down with it
            _kill_group(pgid, signal.SIGKILL)
            process.wait()
            raise
        finally:
            _kill_group(pgid, signal.SIGKILL)  # stragglers of a finished runner (servers, engine cores)
    return Outcome(None if timed_out else process.returncode, timed_out, time.perf_counter() - started, log)
