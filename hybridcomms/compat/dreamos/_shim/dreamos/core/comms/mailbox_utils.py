"""Shim: this legacy module path is `hybridcomms.compat.dreamos.mailbox_utils` (the same module object)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("hybridcomms.compat.dreamos.mailbox_utils")
