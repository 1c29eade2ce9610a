"""Log observers: twistd's text by default, JSON lines with ``--log-format json``."""

from __future__ import annotations

import sys
from typing import Any

from twisted.logger import jsonFileLogObserver

__all__ = ["json_observer"]


def json_observer() -> Any:
    """One JSON object per event on stdout (twistd's ``--logger`` entry point)."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
