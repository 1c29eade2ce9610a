"""The edge every ccnet HTTP(S) listener shares: what one connection may cost.

* :mod:`ccnet.edge.limits` — the settings (``[ccnet]`` defaults, per-listener overrides).
* :mod:`ccnet.edge.connections` — connection tracking, caps, request-head deadline,
  minimum body rate and back-pressure on pipelining, around any twisted.web ``Site``.
* :mod:`ccnet.edge.revocation` — closing open connections whose peer a new CRL revokes.
* :mod:`ccnet.edge.lifecycle` — what stops first, and listeners that cannot listen.
* :mod:`ccnet.edge.shim` — the only place that reads private Twisted attributes.

Importing this package imports nothing from Twisted (``ccnet.config`` uses ``limits``).
"""
