"""Shim: this legacy module path is `hybridcomms.compat.dreamos.file_locking` (the same module object)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("hybridcomms.compat.dreamos.file_locking")
