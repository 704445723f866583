"""Shim package: lets ``import dreamos...`` find hybridcomms' Dream.OS compatibility modules.

Put on ``sys.path`` by `hybridcomms.compat.dreamos.install`. A real ``dreamos`` installation on the path
is still reachable for every other module (``__path__`` is extended over it).
"""

import pkgutil

__path__ = pkgutil.extend_path(__path__, __name__)
