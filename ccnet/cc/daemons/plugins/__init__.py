"""Plugins of ccnet's CC daemons (the original's ``cc.daemon.plugins``)."""
