"""The pipes of a command that `hybridcomms work` runs, read within bounds.

`subprocess.Popen.communicate` reads until every holder of the pipes has closed them, and keeps all of
it: a command that forks a grandchild into a session of its own (which a timeout's process-group kill
does not reach) and leaves it holding stdout keeps ``communicate`` waiting for ever, and a command that
prints 300 MB makes the worker hold 300 MB. `CommandPipes` reads with limits instead:

- stdout: the first ``stdout_limit`` bytes are kept (a reply is a message: it has the message size
  limit); past it, the rest is read and thrown away, and `stdout_over` says so;
- stderr: only the last ``stderr_tail`` bytes are kept (what a dead letter's reason quotes);
- stdin: the message, written as the command reads it (a command that never reads does not block us);
- once the command has exited (or was killed), the pipes are read for at most ``drain`` seconds more,
  then closed: whatever still holds them (a grandchild) no longer holds the worker.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import subprocess
import time
from typing import IO

__all__ = ["CommandPipes"]

_CHUNK = 64 * 1024


class CommandPipes:
    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        data: bytes,
        *,
        stdout_limit: int,
        stderr_tail: int,
        drain: float = 0.5,
    ) -> None:
        self.proc = proc
        self.stdout_limit = stdout_limit
        self.stderr_tail = stderr_tail
        self.drain = drain
        self.stdout = bytearray()
        self.stdout_over = False  # more than stdout_limit bytes were written (the rest was dropped)
        self.stderr = bytearray()
        self._data = memoryview(data)
        self._sel = selectors.DefaultSelector()
        self._exited_at: float | None = None
        self._closed = False
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                os.set_blocking(pipe.fileno(), False)
                self._sel.register(pipe, selectors.EVENT_READ)
        if proc.stdin is not None:
            self._feed(proc.stdin, data)

    def _feed(self, stdin: IO[bytes], data: bytes) -> None:
        """The message is written to the command as it reads it; with no message, its stdin is closed."""
        if data:
            os.set_blocking(stdin.fileno(), False)
            self._sel.register(stdin, selectors.EVENT_WRITE)
        else:
            stdin.close()

    def step(self, timeout: float) -> int | None:
        """Move data for up to ``timeout`` seconds; the exit status once the command has exited and its
        pipes are closed (at EOF, or ``drain`` seconds after the exit), else None."""
        self._move(timeout)
        code = self.proc.poll()
        if code is None:
            return None
        if self._draining():
            return None  # exited: what it wrote is still being read (for a bounded while)
        self.close()
        return code

    def _move(self, timeout: float) -> None:
        """Write and read what the pipes are ready for, waiting up to ``timeout`` seconds for them."""
        if self._sel.get_map():
            for key, _ in self._sel.select(timeout):
                pipe: IO[bytes] = key.fileobj  # type: ignore[assignment]  # registered below: pipes
                if pipe is self.proc.stdin:
                    self._write(pipe)
                else:
                    self._read(pipe)
        elif self._exited_at is None:
            time.sleep(min(timeout, 0.05))  # nothing left to read: only the exit to wait for

    def _draining(self) -> bool:
        """Whether the command, which has exited (noted the first time it is seen), still has pipes
        open for less than ``drain`` seconds since."""
        now = time.monotonic()
        if self._exited_at is None:
            self._exited_at = now
        return bool(self._sel.get_map()) and now - self._exited_at < self.drain

    def close(self) -> None:
        """Stop reading and writing: close our ends of the pipes (once; again is a no-op)."""
        if self._closed:
            return
        self._closed = True
        for key in list(self._sel.get_map().values()):
            self._sel.unregister(key.fileobj)
        self._sel.close()
        self._close_pipes()

    def _close_pipes(self) -> None:
        """Our ends of the command's pipes closed (one that fails to close is closed as far as we go)."""
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def _write(self, pipe: IO[bytes]) -> None:
        fd = pipe.fileno()
        try:
            n = os.write(fd, self._data[:_CHUNK])
        except BlockingIOError:
            return
        except OSError as exc:  # EPIPE: the command stopped reading; the rest of its input is moot
            if exc.errno not in (errno.EPIPE, errno.EINVAL):
                raise
            n = len(self._data)
        self._data = self._data[n:]
        if not self._data:
            self._sel.unregister(pipe)
            pipe.close()

    def _read(self, pipe: IO[bytes]) -> None:
        fd = pipe.fileno()
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            self._sel.unregister(pipe)
            return
        if pipe is self.proc.stdout:
            self._keep_stdout(chunk)
        else:
            self._keep_stderr(chunk)

    def _keep_stdout(self, chunk: bytes) -> None:
        """Keep what fits under ``stdout_limit``; past it, drop the rest and say so (`stdout_over`)."""
        room = self.stdout_limit - len(self.stdout)
        if len(chunk) > room:
            self.stdout_over = True
        if room > 0:
            self.stdout += chunk[:room]

    def _keep_stderr(self, chunk: bytes) -> None:
        """Keep the last ``stderr_tail`` bytes (trimmed once twice that has gathered)."""
        self.stderr += chunk
        if len(self.stderr) > 2 * self.stderr_tail:
            del self.stderr[: len(self.stderr) - self.stderr_tail]
