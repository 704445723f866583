"""Legacy ``dreamos.core.comms.mailbox``: `MailboxHandler`, on real claim and ack.

In Dream.OS, ``get_messages`` read the inbox files and ``archive_message`` moved one to ``archive/``
later: two readers could both process a message, and a crash in between lost track of it. Here the
handler is the agent's hybridcomms consumer:

- ``get_messages`` first takes what legacy writers dropped (``inbox.json``, ``inbox/``) into ``new/``,
  then *claims* up to ``max_count`` messages: each returned path is a file in ``processing/`` that this
  process holds (flock) and no other reader can take;
- ``archive_message(path)`` acknowledges it (to ``done/``); ``fail_message(path, error)`` gives it
  back for a later retry (to ``dead/`` after the attempt limit);
- a message never archived is not lost: if the process dies its lock is released, and if it lives but
  forgets, the lease runs out; either way recovery returns it to ``new/`` and it is delivered again.

Creating a handler adopts the agent's mailbox (its ``new/`` folder appears): Dream.OS senders then
write native files for it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from ... import _log
from ...backends.base import check_agent_id
from ...backends.file import Delivery, FileMailbox
from ...errors import HybridCommsError
from ._delivery import DREAMOS_MODES, deliver
from ._dual import AwaitableList, AwaitableStr, NothingType, dual
from ._messages import create_mailbox_message
from .legacy import IngestProbe, to_legacy_dict
from .mailbox_utils import get_mailbox_root

__all__ = [
    "ARCHIVE_DIR_NAME",
    "FAILED_DIR_NAME",
    "INBOX_DIR_NAME",
    "OUTBOX_DIR_NAME",
    "MailboxError",
    "MailboxHandler",
    "send_message",
]

log = _log.get("hybridcomms.compat.dreamos")

INBOX_DIR_NAME = "inbox"
ARCHIVE_DIR_NAME = "archive"
OUTBOX_DIR_NAME = "outbox"
FAILED_DIR_NAME = "failed"


class MailboxError(Exception):
    """Base exception for mailbox operations."""


class MailboxHandler:
    """One agent's mailbox, read with claim / ack. See the module docstring.

    ``MailboxHandler(agent_id, mailboxes_base_dir)``: ``MailboxError`` if the base folder is missing
    or the agent id is not a safe folder name.
    """

    def __init__(self, agent_id: str, mailboxes_base_dir: str | os.PathLike[str], **options: Any) -> None:
        base = Path(mailboxes_base_dir)
        if not base.is_dir():
            raise MailboxError(f"mailboxes base folder {base} does not exist")
        try:
            self.agent_id = check_agent_id(agent_id)
        except ValueError as exc:
            raise MailboxError(str(exc)) from None
        self.mailboxes_base_dir = base
        self.agent_mailbox_dir = base / agent_id
        self.inbox_path = self.agent_mailbox_dir / INBOX_DIR_NAME
        self.archive_path = self.agent_mailbox_dir / ARCHIVE_DIR_NAME
        try:
            self._mailbox = FileMailbox(base, agent_id, **{**DREAMOS_MODES, **options})
        except (OSError, HybridCommsError) as exc:
            raise MailboxError(f"cannot open the mailbox of {agent_id}: {exc}") from exc
        self._legacy = IngestProbe(self._mailbox)
        self._claimed: dict[str, Delivery] = {}
        self._lock = threading.Lock()

    @property
    def mailbox(self) -> FileMailbox:
        """The hybridcomms mailbox underneath."""
        return self._mailbox

    def send(
        self,
        target_agent_id: str,
        message_type: str,
        payload: dict[str, Any],
        filename_prefix: str = "msg",
        priority: str = "MEDIUM",
    ) -> AwaitableStr | NothingType:
        """Send a message to another agent (where its reader reads: see `deliver`); returns the
        message id, or None (logged) if it could not be sent. Works awaited and plain."""
        try:
            message = create_mailbox_message(
                sender_agent_id=self.agent_id,
                recipient_agent_id=target_agent_id,
                subject=str(message_type),
                message_type=message_type,
                body=payload,
                priority=priority,
            )
            deliver(self.mailboxes_base_dir, target_agent_id, message, filename_prefix=filename_prefix)
        except Exception as exc:
            log.error("%s could not send %s to %s: %s", self.agent_id, message_type, target_agent_id, exc)
            return dual(None)
        return dual(str(message["message_id"]))

    def get_messages(self, max_count: int | None = None) -> AwaitableList:
        """Up to ``max_count`` waiting messages (all that are due if None), highest priority and oldest
        first: ``[(path, message_dict), ...]``. Undecodable files go to ``dead/`` and are skipped.

        Each message is claimed, and stays this handler's until `archive_message` or `fail_message`.
        Called again before that, it returns the messages it still holds again, first (that is how
        legacy loops "leave a message in the mailbox" to retry it): at once, without a new claim and
        without using up an attempt (their lease is renewed). Only a reader that dies gives its
        messages back, through recovery."""
        if max_count is not None and max_count <= 0:
            return AwaitableList()
        self._ingest_legacy_drops()
        out = self._held_as_legacy(max_count)
        self._claim_more(out, max_count)
        out.sort(key=lambda pair: pair[0].name)  # rank and due time: priority, then oldest
        return AwaitableList(out)

    def _ingest_legacy_drops(self) -> None:
        """Take in what legacy writers dropped, if it is time to look; a failure is only logged."""
        try:
            self._legacy.run()
        except (OSError, HybridCommsError) as exc:
            log.warning("%s: legacy drops not ingested this time: %s", self.agent_id, exc)

    def _held_as_legacy(self, max_count: int | None) -> list[tuple[Path, Any]]:
        """The messages this handler still holds, as ``(path, message_dict)``, at most ``max_count``."""
        out: list[tuple[Path, Any]] = [(d.path, self._as_legacy(d)) for d in self._still_held()]
        if max_count is not None:
            out = out[:max_count]
        return out

    def _still_held(self) -> list[Delivery]:
        """The deliveries this handler holds, their leases renewed (those taken back by recovery
        meanwhile are forgotten)."""
        held: list[Delivery] = []
        with self._lock:
            claimed = sorted(self._claimed.items(), key=lambda kv: Path(kv[0]).name)
        for key, d in claimed:
            try:
                d.heartbeat()  # still ours: renew its lease
            except (OSError, HybridCommsError):
                with self._lock:
                    self._claimed.pop(key, None)  # taken back by recovery meanwhile
                continue
            held.append(d)
        return held

    def _claim_more(self, out: list[tuple[Path, Any]], max_count: int | None) -> None:
        """Claim messages into ``out`` until it has ``max_count`` (None: all that are due)."""
        while max_count is None or len(out) < max_count:
            fresh = self._claim_one()
            if fresh is None:
                break
            with self._lock:
                self._claimed[str(fresh.path)] = fresh
            out.append((fresh.path, self._as_legacy(fresh)))

    def _claim_one(self) -> Delivery | None:
        """The next due message claimed; None if there is none, or the claim failed (logged)."""
        try:
            return self._mailbox.claim()
        except (OSError, HybridCommsError) as exc:
            log.error("%s: claim failed: %s", self.agent_id, exc)
            return None

    @staticmethod
    def _as_legacy(d: Delivery) -> Any:
        """The legacy message dict of a delivery, with its ``delivery_attempt`` (a message that is not
        a JSON object is given as it was written)."""
        message = to_legacy_dict(d.message)
        if isinstance(message, dict):
            message = {**message, "delivery_attempt": d.attempt}
        return message

    def _take(self, path: str | os.PathLike[str]) -> Delivery | None:
        with self._lock:
            return self._claimed.pop(str(Path(path)), None)

    def archive_message(self, message_path: str | os.PathLike[str]) -> bool:
        """Acknowledge a message from `get_messages` (moved to ``done/``). A legacy file given by
        path (``inbox/...``) is moved to ``archive/`` as before. False if there is no such message."""
        d = self._take(message_path)
        if d is not None:
            return self._ack(d, message_path)
        path = Path(message_path)
        if self._is_inbox_file(path):
            return self._archive_inbox_file(path)
        log.warning("%s: %s is not a message this handler holds", self.agent_id, message_path)
        return False

    def _ack(self, d: Delivery, message_path: str | os.PathLike[str]) -> bool:
        """Acknowledge a held message; False (logged) if that failed."""
        try:
            d.ack()
            return True
        except (OSError, HybridCommsError) as exc:
            log.error("%s: could not archive %s: %s", self.agent_id, message_path, exc)
            return False

    def _is_inbox_file(self, path: Path) -> bool:
        """Is ``path`` a legacy file in this agent's ``inbox/``?"""
        return path.parent == self.inbox_path and path.is_file()

    def _archive_inbox_file(self, path: Path) -> bool:
        """Move a legacy ``inbox/`` file to ``archive/`` as the legacy handler did; False (logged) if
        that failed."""
        try:
            self.archive_path.mkdir(mode=0o770, exist_ok=True)
            os.replace(path, self.archive_path / path.name)
            return True
        except OSError as exc:
            log.error("%s: could not archive %s: %s", self.agent_id, path, exc)
            return False

    def fail_message(self, message_path: str | os.PathLike[str], error: str | None = None) -> bool:
        """Give a message from `get_messages` back for a retry after a backoff (to ``dead/``, with
        the error as its reason, once it has used up its attempts)."""
        d = self._take(message_path)
        if d is None:
            return False
        d.nack(error=error)
        return True

    def release_all(self) -> int:
        """Give back every message still held (e.g. on shutdown): they are delivered again."""
        with self._lock:
            held, self._claimed = list(self._claimed.values()), {}
        for d in held:
            d.nack(delay=0, error="released unprocessed")
        return len(held)

    def close(self) -> None:
        self.release_all()
        self._mailbox.close()

    def __repr__(self) -> str:
        return f"<MailboxHandler {self.agent_id} in {self.mailboxes_base_dir}>"


def send_message(
    message: dict[str, Any],
    recipient_agent_id: str | None = None,
    filename_prefix: str = "msg",
    *,
    mailboxes_base_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Deliver a message dict to ``recipient_agent_id`` (default: its ``recipient_agent_id``
    field) under ``MAILBOX_ROOT``; returns the file written. Works awaited and plain."""
    recipient = _recipient(message, recipient_agent_id)
    if not isinstance(recipient, str):
        raise ValueError("send_message needs recipient_agent_id (or a recipient_agent_id field)")
    root = Path(mailboxes_base_dir) if mailboxes_base_dir is not None else get_mailbox_root()
    return dual(deliver(root, recipient, dict(message), filename_prefix=filename_prefix))


def _recipient(message: dict[str, Any], recipient_agent_id: str | None) -> Any:
    """Whom `send_message` delivers to: as given, else the message's ``recipient_agent_id`` (or
    ``recipient``) field."""
    return recipient_agent_id or message.get("recipient_agent_id") or message.get("recipient")
