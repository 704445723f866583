"""``hybridcomms work AGENT -- CMD [ARGS...]``: a consumer that runs a command per message.

For each message it claims from AGENT's mailbox it starts CMD (never through a shell: the arguments are
passed as they are) with the message's JSON on stdin and these in the environment:

    HYBRIDCOMMS_AGENT, HYBRIDCOMMS_ID, HYBRIDCOMMS_TOPIC, HYBRIDCOMMS_SENDER, HYBRIDCOMMS_ATTEMPT,
    HYBRIDCOMMS_MAX_ATTEMPTS, HYBRIDCOMMS_PRIORITY, HYBRIDCOMMS_CORRELATION_ID, HYBRIDCOMMS_REPLY_TO

and settles the message by its exit status:

    0                 ack; if the message asked for a reply (a ``request``), CMD's stdout is the reply
                      (JSON if it parses, else the text), sent as `Comms.reply` sends one: durable
                      whatever the policy says of its topic, into the requester's mailbox on this
                      mailbox's backend
    75 (EX_TEMPFAIL)  nack: delivered again after the mailbox's backoff
    anything else     nack; on the last attempt, dead-letter with the exit status and the end of stderr
    --timeout passed  CMD's whole process group is killed; nack (dead-letter on the last attempt)

While CMD runs, the claim's lease is renewed (heartbeats), so a long job is never taken away. SIGTERM or
SIGINT stop it: no new claim; running commands get ``--grace`` seconds to finish (and are settled as above),
then their process groups are killed and their messages nacked. Nothing is lost either way: a message is
acked only after its command exited 0.

The routing policy is found as every part finds it (`hybridcomms.policy.find_policy`; ``--policy``
first), logged at the start, and handed to CMD as ``$HYBRIDCOMMS_POLICY`` when it comes from a file, so
what CMD sends (``hybridcomms send``, a `Comms`) routes as this consumer's fleet does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import orjson

from .. import _log
from .._outage import Outage
from .._text import json_text, printable
from .._urls import child_environ, shown_url
from ..backends import Mailbox, MailboxDelivery
from ..comms import REPLY_HEADER
from ..errors import HybridCommsError
from ..message import Message, reply_topic
from ..retry import Backoff, attempts_used_up
from .command_io import CommandPipes
from .common import LineWriter, Parents, on_stop_signals, open_existing, resolve_policy, restore_signals

if TYPE_CHECKING:
    from ..metrics import WorkMetrics
    from .common import Subparsers

log = _log.get("hybridcomms.work")

EX_TEMPFAIL = 75
EX_SOFTWARE = 70  # the worker itself failed (a consumer thread died): exit so a supervisor restarts it
EX_CONFIG = 78  # the command cannot be started (missing, not executable): nothing to retry
STDERR_TAIL = 2000  # bytes of stderr kept in a dead-letter reason
DRAIN = 0.5  # seconds the pipes are still read after the command exited (a grandchild may hold them)


class Worker:
    def __init__(self, args: argparse.Namespace, mailbox: Mailbox, command: list[str]) -> None:
        self.args = args
        self.mb = mailbox
        self.command = command
        self.stop = threading.Event()
        self.killed = threading.Event()  # past the grace: running commands are killed
        self.kill_reason = ""  # why they were (the error their messages are retried with)
        self.stop_signal: str | None = None  # the signal that stopped the worker (SIGTERM, SIGINT)
        self.running = 0  # commands running now
        self.lock = threading.Lock()
        # Its output closed (`work … | head`): stop as on SIGTERM, the running commands finish.
        self.write = LineWriter(on_close=self._output_closed)
        self.outage = Outage(
            mailbox.agent_id,
            mailbox.kind,
            shown_url(getattr(mailbox, "url", "")) or str(getattr(mailbox, "path", mailbox.agent_id)),
            say=lambda text: print(f"hybridcomms work: {text}", file=sys.stderr, flush=True),
        )
        self.counts = {"acked": 0, "retried": 0, "dead": 0, "replied": 0}
        self.claims = 0  # claims begun (with --max-messages, never more than it)
        self.heartbeat_every = max(min(mailbox.lease / 3.0, 30.0), 0.05)
        self.metrics: Any = None  # a WorkMetrics with --metrics-port
        self.exit_code = 0  # EX_CONFIG or EX_SOFTWARE when the worker had to stop on its own
        self.env: dict[str, str] = {}  # added to CMD's environment (the policy file)
        # CMD's environment: this one's, without a password in $HYBRIDCOMMS_URL (`child_environ`).
        self.base_env = child_environ()

    def _stop_with(self, code: int, why: str) -> None:
        """Stop the worker, to exit with ``code`` (the first reason given wins)."""
        with self.lock:
            first = self.exit_code == 0
            if first:
                self.exit_code = code
        if first:
            print(f"hybridcomms work: {why}; stopping", file=sys.stderr, flush=True)
        self.stop.set()
        self.mb.wake()

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        threads = [
            threading.Thread(target=self._guarded_loop, name=f"hybridcomms-work-{i}", daemon=True)
            for i in range(self.args.concurrency)
        ]
        for t in threads:
            t.start()
        self._wait_for_stop(threads)
        self.mb.wake()
        self._say_grace()
        self._join(threads)
        c = self.counts
        print(
            f"hybridcomms work: stopped; {c['acked']} acked, {c['retried']} to retry, "
            f"{c['dead']} dead-lettered",
            file=sys.stderr,
            flush=True,
        )
        return self.exit_code

    def _wait_for_stop(self, threads: list[threading.Thread]) -> None:
        """Until a signal, a closed output, a failure, or --max-messages handled (every consumer
        thread ended: each ends when the claims the limit allows are taken and its own is handled)."""
        while not self.stop.wait(0.2):
            if not any(t.is_alive() for t in threads):
                self.stop.set()

    def _join(self, threads: list[threading.Thread]) -> None:
        """Wait for the consumer threads: the running commands get the grace, then are killed.
        Waited for in short turns: a signal the kernel handed to another thread runs its Python
        handler only when this (the main) thread wakes up (a second Ctrl-C waited out the grace)."""
        deadline = time.monotonic() + self.args.grace
        remaining = self.args.grace
        while remaining > 0 and not self.killed.is_set():
            alive = [t for t in threads if t.is_alive()]
            if not alive:
                break
            alive[0].join(min(remaining, 0.2))
            remaining = deadline - time.monotonic()
        self._kill_stragglers(threads)

    def _kill_stragglers(self, threads: list[threading.Thread]) -> None:
        """Past the grace: what still runs is killed, and its thread waited for (it nacks the message)."""
        if any(t.is_alive() for t in threads):
            signal_name = self.stop_signal or "SIGTERM"
            self.kill_now(f"stopped: still running {self.args.grace:g}s after {signal_name}")
            for t in threads:
                t.join(10)

    def kill_now(self, why: str) -> None:
        """Kill the running commands (their messages are retried with ``why``)."""
        if not self.killed.is_set():
            self.kill_reason = why
            self.killed.set()

    def on_stop_signal(self, name: str) -> None:
        """SIGTERM or Ctrl-C: no new claims, the running commands get the grace; the same signal
        again kills them now."""
        if self.stop_signal is not None:
            self.kill_now(f"stopped by a second {name}")
        else:
            self.stop_signal = name
        self.stop.set()
        self.mb.wake()

    def _say_grace(self) -> None:
        """Stopped by a signal with commands running: say what becomes of them, and how to end it now
        (else the terminal says nothing for the whole grace)."""
        with self.lock:
            running = self.running
        if self.stop_signal is None or not running:
            return
        print(
            f"hybridcomms work: {self.stop_signal}: no new messages; {running} running "
            f"command{'s' if running > 1 else ''} get --grace {self.args.grace:g}s to finish, then are "
            f"killed and retried ({self.stop_signal} again: now)",
            file=sys.stderr,
            flush=True,
        )

    def _guarded_loop(self) -> None:
        """`_loop`; if it dies of something unexpected, the whole worker stops and exits non-zero
        (a supervisor restarts it) instead of going on with one consumer thread fewer."""
        try:
            self._loop()
        except BaseException as exc:
            self._stop_with(EX_SOFTWARE, f"a consumer thread died: {type(exc).__name__}: {exc}")

    def _output_closed(self) -> None:
        self.stop.set()
        self.mb.wake()

    def _loop(self) -> None:
        while not self.stop.is_set() and self._may_claim():
            d = self._claim()
            if d is None:
                self._unclaimed()
            else:
                self._handle_settled(d)

    def _may_claim(self) -> bool:
        """Whether a claim may begin: always, or with --max-messages while fewer claims than that
        have begun (counted before claiming: the threads together never handle one more)."""
        with self.lock:
            if self.args.max_messages and self.claims >= self.args.max_messages:
                return False
            self.claims += 1
            return True

    def _unclaimed(self) -> None:
        """A claim that got nothing does not count against --max-messages."""
        with self.lock:
            self.claims -= 1

    def _claim(self) -> MailboxDelivery | None:
        """The next message (None: none came within a second, or the backend failed and was waited for)."""
        try:
            d = self.mb.claim(timeout=1.0, cancel=self.stop)
        except (OSError, HybridCommsError) as exc:
            # One line when the backend starts failing and one when it is back, whatever the
            # number of tries and threads (`hybridcomms._outage`).
            self.stop.wait(self.outage.failed(exc))
            return None
        self.outage.ok()
        return d

    def _handle_settled(self, d: MailboxDelivery) -> None:
        """`_handle`; if it fails, the message is settled (nacked) whatever happened, and the loop goes on."""
        with self.lock:
            self.running += 1
        try:
            self._handle(d)
        except Exception as exc:
            if not d.settled:
                try:
                    d.nack(error=f"{type(exc).__name__}: {exc}")
                except (OSError, HybridCommsError):
                    pass
            print(f"hybridcomms work: {d.message.id}: {exc}", file=sys.stderr, flush=True)
        finally:
            with self.lock:
                self.running -= 1

    # -- one message --------------------------------------------------------------------------

    def _handle(self, d: MailboxDelivery) -> None:
        m = d.message  # never one past its expiry: the mailbox dead-letters those at claim
        env = self._env(d)
        started = time.monotonic()
        proc = self._start(d, env)
        if proc is None:
            return
        out, err, code, why = self._wait(proc, d, m.encode(None), started)
        self._settle(d, out, err, code, why, time.monotonic() - started)

    def _settle(
        self, d: MailboxDelivery, out: bytes, err: bytes, code: int | None, why: str | None, seconds: float
    ) -> None:
        """The message settled by how its command ended: acked on 0, retried on `EX_TEMPFAIL` while it
        has attempts left, else failed (``why``: it was stopped, timed out or could not be read)."""
        if why is not None:
            self._fail(d, why, code, seconds, err)
        elif code == 0:
            self._ack(d, out, seconds)
        elif self._retries(code, d):
            self._retry(d, code, seconds)
        else:
            self._fail(d, _exit_reason(code), code, seconds, err)

    def _retries(self, code: int | None, d: MailboxDelivery) -> TypeGuard[int]:
        """Whether the command asked for a retry (`EX_TEMPFAIL`) and the message has attempts left."""
        return code == EX_TEMPFAIL and not attempts_used_up(d.attempt, self.mb.max_attempts)

    def _env(self, d: MailboxDelivery) -> dict[str, str]:
        """CMD's environment: this one's, the worker's additions, and the message's HYBRIDCOMMS_*."""
        m = d.message
        env = dict(self.base_env)
        env.update(self.env)
        env.update(
            HYBRIDCOMMS_AGENT=self.mb.agent_id,
            HYBRIDCOMMS_ID=m.id,
            HYBRIDCOMMS_TOPIC=m.topic,
            HYBRIDCOMMS_SENDER=m.sender or "",
            HYBRIDCOMMS_ATTEMPT=str(d.attempt),
            HYBRIDCOMMS_MAX_ATTEMPTS=str(self.mb.max_attempts),
            HYBRIDCOMMS_PRIORITY=m.priority.name,
            HYBRIDCOMMS_CORRELATION_ID=m.correlation_id or "",
            HYBRIDCOMMS_REPLY_TO=m.reply_to or "",
        )
        return env

    def _start(self, d: MailboxDelivery, env: dict[str, str]) -> subprocess.Popen[bytes] | None:
        """CMD started for the message; None if it cannot be (the message is given back, the worker stops)."""
        try:
            return subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group: a timeout kills all of it
            )
        except OSError as exc:
            # Not the message's fault but the worker's configuration (a missing or non-executable
            # command): give the message back as it was and stop, rather than dead-letter every
            # message of the mailbox one after the other.
            d.nack(delay=0.0, error=f"cannot start {self.command[0]}: {exc.strerror or exc}")
            self._report(d, "retry", None, 0.0, f"cannot start {self.command[0]}")
            self._stop_with(EX_CONFIG, f"cannot start {self.command[0]}: {exc.strerror or exc}")
            return None

    def _ack(self, d: MailboxDelivery, out: bytes, seconds: float) -> None:
        """CMD exited 0: its output is the reply to a request, and the message is acked."""
        m = d.message
        replied = self._reply(m, out) if m.reply_to else False
        d.ack()
        with self.lock:
            self.counts["acked"] += 1
            self.counts["replied"] += int(replied)
        self._report(d, "acked", 0, seconds)

    def _retry(self, d: MailboxDelivery, code: int, seconds: float) -> None:
        """CMD asked for a retry (EX_TEMPFAIL), attempts are left: nacked, delivered after the backoff."""
        d.nack(error=f"exit status {EX_TEMPFAIL} (try again later)")
        with self.lock:
            self.counts["retried"] += 1
        self._report(d, "retry", code, seconds)

    def _wait(
        self, proc: subprocess.Popen[bytes], d: MailboxDelivery, data: bytes, started: float
    ) -> tuple[bytes, bytes, int | None, str | None]:
        """Feed stdin, collect stdout/stderr within bounds (`CommandPipes`), renew the lease; kill on
        timeout or past the grace. Returns (stdout, stderr, exit status, why it was stopped or None)."""
        pipes = CommandPipes(
            proc, data, stdout_limit=self.mb.max_message_size, stderr_tail=STDERR_TAIL, drain=DRAIN
        )
        try:
            code, why = self._run_to_exit(proc, pipes, _Heartbeat(d, self.heartbeat_every, started), started)
        finally:
            pipes.close()
        if why is None and _reply_too_large(pipes, code, d):
            why = f"its output is over the reply limit of {self.mb.max_message_size} bytes"
        return bytes(pipes.stdout), bytes(pipes.stderr), code, why

    def _run_to_exit(
        self, proc: subprocess.Popen[bytes], pipes: CommandPipes, beat: _Heartbeat, started: float
    ) -> tuple[int, str | None]:
        """Move the pipes' data until CMD has exited, killing it when it must stop: (exit status, why
        it was stopped or None)."""
        why: str | None = None
        while True:
            code = pipes.step(self._step(started, why))
            if code is not None:
                return code, why
            if why is not None:
                continue  # killed: waiting (a bounded while) for the exit and the last output
            why = self._why_stop(beat, started)
            if why is not None:
                _kill_group(proc)

    def _step(self, started: float, why: str | None) -> float:
        """How long one wait on the pipes lasts: short (a SIGTERM, a timeout or a heartbeat is never late
        by more), and not past the timeout."""
        step = 0.2
        limit = self.args.timeout
        if limit and why is None:
            step = min(step, max(limit - (time.monotonic() - started), 0.01))
        return step

    def _why_stop(self, beat: _Heartbeat, started: float) -> str | None:
        """Why a running CMD must be killed now: its timeout, the grace after SIGTERM over, or its lease
        lost (renewed here when due); None while it runs on."""
        now = time.monotonic()
        limit = self.args.timeout
        if limit and now - started >= limit:
            return f"timed out after {limit:g}s"
        if self.killed.is_set():
            return self.kill_reason
        if not beat.renew_if_due(now):
            return "lease lost"  # recovery took it (lease): another consumer has it now
        return None

    def _fail(self, d: MailboxDelivery, why: str, code: int | None, seconds: float, err: bytes = b"") -> None:
        tail = err[-STDERR_TAIL:].decode("utf-8", "replace").strip()
        text = f"{why}: {tail}" if tail else why
        if why == "lease lost":
            self._report(d, "lost", code, seconds, text)
        elif attempts_used_up(d.attempt, self.mb.max_attempts):
            self._dead_letter(d, text, code, seconds)
        else:
            self._give_back(d, text, code, seconds)

    def _dead_letter(self, d: MailboxDelivery, text: str, code: int | None, seconds: float) -> None:
        """Its last attempt failed: to dead/, with why and which attempt it was."""
        with _log.reported_by_caller():  # its line is the one `_report` prints
            d.dead(f"{text} (attempt {d.attempt} of {self.mb.max_attempts})")
        with self.lock:
            self.counts["dead"] += 1
        self._report(d, "dead", code, seconds, text)

    def _give_back(self, d: MailboxDelivery, text: str, code: int | None, seconds: float) -> None:
        """An attempt failed with attempts left: nacked, delivered again after the backoff."""
        d.nack(error=text)
        with self.lock:
            self.counts["retried"] += 1
        self._report(d, "retry", code, seconds, text)

    def _reply(self, request: Message, out: bytes) -> bool:
        """Send CMD's output as the reply to a request; False (said on stderr) if it cannot be sent."""
        to = request.reply_to
        assert to is not None
        try:  # the command has done its work: a reply that cannot be made never runs it again
            reply = Message(
                reply_topic(request.topic),
                _reply_payload(out),
                sender=self.mb.agent_id,
                recipient=to,
                correlation_id=request.id,
                headers={REPLY_HEADER: True},
            )
            box = self._reply_box(to)
            with box:
                box.put(reply)
        except (OSError, HybridCommsError, TypeError, ValueError) as exc:
            print(printable(f"hybridcomms work: reply to {to} failed: {exc}"), file=sys.stderr, flush=True)
            return False
        return True

    def _reply_box(self, to: str) -> Mailbox:
        """The requester's mailbox, on this mailbox's backend (it must exist)."""
        return self.mb.sibling(to, create=False)

    def _report(
        self, d: MailboxDelivery, outcome: str, code: int | None, seconds: float, error: str | None = None
    ) -> None:
        m = d.message
        if self.metrics is not None:
            self.metrics.observe(self.mb.agent_id, outcome, seconds)
        if self.args.json:
            line = json_text(
                {
                    "id": m.id,
                    "topic": m.topic,
                    "attempt": d.attempt,
                    "outcome": outcome,
                    "exit": code,
                    "seconds": round(seconds, 6),
                    "error": error,
                }
            )
        else:  # the error quotes the command's stderr: one line, inert
            line = printable(
                f"{outcome:<6} {m.id} {m.topic} attempt {d.attempt}" + (f": {error}" if error else "")
            )
        self.write(line)


def _reply_payload(out: bytes) -> Any:
    """A reply's payload from CMD's stdout: JSON if it parses, else the text (None for nothing)."""
    text = out.decode("utf-8", "replace")
    try:
        return orjson.loads(out) if out.strip() else None
    except orjson.JSONDecodeError:
        return text


class _Heartbeat:
    """The lease renewals of one claim while its command runs: one every ``every`` seconds."""

    def __init__(self, d: MailboxDelivery, every: float, started: float) -> None:
        self.d = d
        self.every = every
        self.at = started + every

    def renew_if_due(self, now: float) -> bool:
        """Renew the lease if it is time; False if it was lost."""
        if now < self.at:
            return True
        self.at = now + self.every
        try:
            self.d.heartbeat()
        except HybridCommsError:
            return False
        return True


def _reply_too_large(pipes: CommandPipes, code: int | None, d: MailboxDelivery) -> bool:
    """Whether a command that answered a request (exit 0) wrote more than a reply may hold."""
    return bool(pipes.stdout_over and code == 0 and d.message.reply_to)


def _exit_reason(code: int | None) -> str:
    """Why a command's exit status failed its message."""
    if code == EX_TEMPFAIL:  # its last attempt: dead, and reported so (not "retry")
        return f"exit status {EX_TEMPFAIL} (try again later)"
    return f"exit status {code}"


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """The command's whole process group killed (one that is gone already is no error)."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_work(args: argparse.Namespace, root: Path) -> int:
    command = list(args.cmd)
    refused = _refusal(args, command)
    if refused is not None:
        return refused
    from ..policy import child_env

    policy = resolve_policy(getattr(args, "policy", None))
    log.info("%s: routing policy from %s", args.agent, policy.provenance)
    mailbox = _open_mailbox(args, root)
    worker = Worker(args, mailbox, command)
    worker.env = child_env(policy)
    if args.metrics_port is not None:
        worker.metrics = _serve_metrics(args)

    def on_signal(signum: int, frame: Any) -> None:
        worker.on_stop_signal(signal.Signals(signum).name)

    previous = on_stop_signals(on_signal)
    print(
        f"hybridcomms work: {args.agent}: running {' '.join(command)} for each message "
        f"({args.concurrency} at a time; routing policy from {policy.provenance}); "
        "stop with SIGTERM or Ctrl-C",
        file=sys.stderr,
        flush=True,
    )
    try:
        return worker.run()
    finally:
        restore_signals(previous)
        worker.outage.close()
        mailbox.close()


def _refusal(args: argparse.Namespace, command: list[str]) -> int | None:
    """The exit status of a worker that must not start (bad usage: 2; a command that cannot be run:
    `EX_CONFIG`), said in one line; None if it may start."""
    usage = _usage_problem(args, command)
    if usage is not None:  # bad usage: exit 2, as argparse's own errors
        print(f"hybridcomms work: {usage}", file=sys.stderr)
        return 2
    if shutil.which(command[0]) is None:  # before anything is claimed: a configuration error
        print(
            f"hybridcomms work: cannot run {command[0]!r}: not found, or not an executable file "
            "(the command is run without a shell: give a path or a name on $PATH)",
            file=sys.stderr,
        )
        return EX_CONFIG
    return None


def _usage_problem(args: argparse.Namespace, command: list[str]) -> str | None:
    """What is wrong with the options and the command given (None: nothing)."""
    if not command:
        return "give the command after '--': hybridcomms work AGENT -- CMD [ARGS...]"
    if args.concurrency < 1:
        return "--concurrency must be at least 1"
    if _bad_retry_options(args):
        return "--max-attempts must be >= 1, --retry-delay >= 0, --lease > 0"
    return None


def _bad_retry_options(args: argparse.Namespace) -> bool:
    """Whether --max-attempts, --retry-delay or --lease is out of its range."""
    return bool(args.max_attempts < 1 or args.retry_delay < 0 or args.lease <= 0)


def _open_mailbox(args: argparse.Namespace, root: Path) -> Mailbox:
    """The mailbox to consume, with the options given (fsync always unless --fsync says otherwise)."""
    return open_existing(
        root,
        args.agent,
        "work",
        args.create,
        url=getattr(args, "url_resolved", None),
        fsync=args.fsync or "always",
        max_attempts=args.max_attempts,
        lease=args.lease,
        backoff=Backoff(initial=args.retry_delay, factor=2.0, maximum=max(300.0, args.retry_delay)),
    )


def _serve_metrics(args: argparse.Namespace) -> WorkMetrics:
    """Serve this worker's metrics on --metrics-port; returns the `WorkMetrics` it feeds."""
    from prometheus_client import start_http_server

    from ..metrics import OutageCollector, WorkMetrics, registry_for

    # Only what this consumer did, and the backend outages it went through: the mailbox depths
    # belong to the one exporter of the root (watch --metrics-port, or stats --prometheus), so a
    # dashboard never counts them twice.
    registry = registry_for(None)
    registry.register(OutageCollector())
    metrics = WorkMetrics(registry)
    start_http_server(args.metrics_port, addr=args.metrics_addr, registry=registry)
    return metrics


def split_argv(words: list[str]) -> tuple[list[str], list[str]]:
    """``work AGENT [OPTIONS] -- CMD [ARGS...]``: everything after "--" is the command, as it is (not
    parsed); (the words to parse, the command)."""
    if "work" in words and "--" in words[words.index("work") :]:
        cut = words.index("--", words.index("work"))
        return words[:cut], words[cut + 1 :]
    return words, []


def register(sub: Subparsers, parents: Parents) -> None:
    wk = sub.add_parser(
        "work",
        parents=[parents.mailboxes],
        help="run a command for each message of AGENT's mailbox: exit 0 acks, 75 retries, other fails",
        usage="%(prog)s AGENT [options] -- CMD [ARGS...]",
        epilog="CMD [ARGS...] (after '--') is run as it is, never through a shell: "
        "hybridcomms work Agent-1 --concurrency 2 -- ./handle-message --verbose",
        description="Claims AGENT's messages and runs CMD (not through a shell) for each: the message's JSON "
        "on stdin, HYBRIDCOMMS_ID, _TOPIC, _SENDER, _ATTEMPT, _MAX_ATTEMPTS, _PRIORITY, _CORRELATION_ID, "
        "_REPLY_TO, _AGENT in the environment. Exit 0 acks (stdout is the reply to a request); exit 75 "
        "(EX_TEMPFAIL) retries after the backoff; any other exit retries, and dead-letters on the last "
        "attempt with the exit status and the end of stderr. SIGTERM stops it cleanly.",
    )
    wk.add_argument("agent", help="the agent whose mailbox to consume")
    wk.add_argument("--concurrency", type=int, default=1, help="messages handled at once (default 1)")
    wk.add_argument(
        "--timeout", type=float, default=None, help="seconds a command may run; then it is killed and retried"
    )
    wk.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds running commands get to finish before they are killed (default 30)",
    )
    wk.add_argument(
        "--max-messages", type=int, default=0, help="stop after handling this many messages (0: never)"
    )
    wk.add_argument("--json", action="store_true", help="one JSON line per handled message on stdout")
    wk.add_argument("--create", action="store_true", help="create the mailbox if it does not exist")
    wk.add_argument(
        "--max-attempts", type=int, default=5, help="deliveries before a failing message is dead-lettered (5)"
    )
    wk.add_argument(
        "--retry-delay",
        type=float,
        default=1.0,
        help="seconds before the first retry; each further retry waits twice as long, at most 300 (1)",
    )
    wk.add_argument(
        "--lease",
        type=float,
        default=300.0,
        help="seconds a claim stays ours without a heartbeat; renewed every third of it while CMD runs (300)",
    )
    wk.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port (/metrics)"
    )
    wk.add_argument("--metrics-addr", default="127.0.0.1", help="address for the metrics (127.0.0.1)")
    wk.set_defaults(func=run_work, cmd=[])
