"""The file backend: one agent's messages as files in ``tmp/ new/ processing/ done/ dead/`` under a
root on one host (`FileMailbox`; the layout is in ``runtime_layout.md``).

``mailbox`` (`FileMailbox`: opening, put, claim), ``delivery`` (`Delivery`: every settle),
``folders`` (the open folders and everything done to files between them: moves, ``tmp/`` writes,
dead-lettering), ``opening`` (finding or making the folders), ``dead_letters``, ``reading`` (what a
claimed file holds), ``index`` (the claim order),
``wakeup`` (inotify), ``retention`` (``done/``), ``last_errors`` (``errors/``), ``recovery`` and
``inspection``; ``subscriptions`` (durable subscriptions beside each mailbox).
"""

from __future__ import annotations

from .delivery import Delivery
from .mailbox import DEFAULT_ROOT, FileMailbox, list_agents

__all__ = ["DEFAULT_ROOT", "Delivery", "FileMailbox", "list_agents"]
