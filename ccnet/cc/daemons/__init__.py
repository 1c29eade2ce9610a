"""CC daemons: clients of a CC server configured from its ini.

Each module runs as ``python -m ccnet.cc.daemons.<name> <ini> <section>``,
standalone or launched by the ``jobmgr`` handler (same code), and exposes
``parse_options(section, ini)`` so jobmgr can check its section at start-up.
"""
