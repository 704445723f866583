"""The Dream.OS operations the command line offers, registered with the intake hook as ``ADOPTION``
(`hybridcomms.intake.adoption`): the CLI reaches Dream.OS only through the hook and imports nothing
from this package.

Each operation calls its module's function when it is used (``legacy.ingest``, ``migrate.migrate``),
so the modules are imported only by the commands that need them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...backends.file import FileMailbox
    from ...intake import Adoption
    from ...message import Message
    from .legacy import IngestReport
    from .migrate import Migration

__all__ = ["ADOPTION", "DreamOSAdoption"]


class DreamOSAdoption:
    """`hybridcomms.intake.Adoption` for the Dream.OS legacy layouts (``inbox.json``, ``inbox/``)."""

    def status(self, root: str | os.PathLike[str], agent: str) -> dict[str, Any] | None:
        from . import legacy

        return legacy.legacy_status(root, agent)

    def deliver(self, root: str | os.PathLike[str], agent: str, message: Message) -> Path:
        from . import _delivery, legacy

        return _delivery.deliver(root, agent, legacy.to_legacy_dict(message))

    def has_drops(self, root: str | os.PathLike[str], agent: str) -> bool:
        from . import legacy

        return legacy.has_legacy_drops(root, agent)

    def ingest(self, mailbox: FileMailbox) -> IngestReport:
        from . import legacy

        return legacy.ingest(mailbox)

    def migrate(self, root: str | os.PathLike[str], **options: Any) -> Migration:
        from . import migrate

        return migrate.migrate(root, **options)


ADOPTION: Adoption = DreamOSAdoption()
