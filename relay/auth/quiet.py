"""The logger dkimpy is handed: it logs every failed signature at ERROR, which a relay that
verifies mail from anyone must not print; the results carry the reasons instead."""

from __future__ import annotations

import logging

QUIET = logging.Logger("floodgate.dkimpy", level=logging.CRITICAL + 1)
QUIET.addHandler(logging.NullHandler())
