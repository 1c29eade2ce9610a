"""``handler = dbhandler``: the original name of the ``database`` handler."""

from ccnet.cc.handlers.database import DatabaseHandler

__all__ = ["handler_class"]

handler_class = DatabaseHandler
