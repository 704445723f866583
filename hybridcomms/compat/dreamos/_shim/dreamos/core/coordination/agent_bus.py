"""Shim: this legacy module path is the AgentBus module of the chosen Dream.OS era (the same module
object): the newest (e563f46) unless HYBRIDCOMMS_DREAMOS_ERA names another (see compat.dreamos.ERAS)."""

import importlib
import sys

from hybridcomms.compat.dreamos import ERAS, era_of

sys.modules[__name__] = importlib.import_module("hybridcomms.compat.dreamos." + ERAS[era_of(None)])
