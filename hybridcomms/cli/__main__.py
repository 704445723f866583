"""``python -m hybridcomms.cli``: the ``hybridcomms`` command (as ``python -m hybridcomms``)."""

import sys

from . import main

sys.exit(main())
