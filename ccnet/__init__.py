"""ccnet: one Twisted daemon for mPlane, DIRAC-style RPC and CC messaging."""

__version__ = "0.1.0"
