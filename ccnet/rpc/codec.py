"""DIRAC ``JEncode``: JSON with type markers, as spoken by DIRAC HTTPS clients.

Pure module (no Twisted).  Wire forms, identical to ``DIRAC.Core.Utilities.JEncode``:

* tuples become lists, dict keys become strings (plain JSON rules);
* ``datetime`` -> ``{"__dCls": "dt", "obj": "YYYY-mm-dd HH:MM:SS"}`` (DIRAC drops
  microseconds; aware datetimes are converted to UTC first and decode as naive UTC);
* ``date`` -> ``{"__dCls": "date", "obj": "YYYY-mm-dd"}``;
* ``bytes`` -> ``{"__dCls": "b64", "obj": "<base64>"}``;
* ``nan``/``inf``/``-inf`` -> the literals ``NaN``/``Infinity``/``-Infinity`` (Python's
  json default, which DIRAC keeps; not strict JSON);
* objects of *registered* classes -> ``{"__dCls": "<Class>", "__dMod": "<module>", <attrs>}``.

DIRAC imports the module named by the peer when decoding an object; ccnet never does:
only classes registered on a :class:`JCodec` decode, anything else is a
:class:`CodecError` (the server answers 400).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from collections.abc import Iterable
from typing import Any

__all__ = ["DATETIME_FORMAT", "DATE_FORMAT", "CodecError", "JCodec", "decode", "encode"]

DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DATE_FORMAT = "%Y-%m-%d"

_CLASS_KEY = "__dCls"
_MODULE_KEY = "__dMod"


class CodecError(ValueError):
    """The text is not valid JEncode, or names a class this codec does not know."""


class JCodec:
    """A JEncode codec with its own set of serializable classes.

    A registered class lists the attributes to send in ``_attrToSerialize`` (the DIRAC
    ``JSerializable`` convention) and can be built without arguments; decoding sets
    those attributes on a fresh instance.  A class may instead provide
    ``_toJSON(self) -> dict`` and ``_fromJSON(cls, dict)``.
    """

    def __init__(self, classes: Iterable[type] = ()) -> None:
        self._by_name: dict[tuple[str, str], type] = {}
        for cls in classes:
            self._by_name[(cls.__module__, cls.__name__)] = cls
        self._encoder = json.JSONEncoder(
            # NaN and ±Infinity as the bare literals NaN/Infinity/-Infinity, as DIRAC's
            # json.dumps writes them (and json.loads on both sides reads them back).
            default=self._default, ensure_ascii=False, separators=(",", ":"), allow_nan=True
        )
        self._decoder = json.JSONDecoder(object_hook=self._object_hook)

    def with_classes(self, classes: Iterable[type]) -> JCodec:
        """A new codec knowing this codec's classes plus ``classes``."""
        return JCodec([*self._by_name.values(), *classes])

    # -- encoding ---------------------------------------------------------------------
    def encode(self, obj: Any) -> str:
        """Encode ``obj`` to a JEncode JSON string."""
        try:
            return self._encoder.encode(obj)
        except (TypeError, ValueError) as e:
            raise CodecError(f"cannot encode value: {e}") from e

    def _default(self, obj: Any) -> Any:
        # datetime is a date subclass: test it first.
        if isinstance(obj, datetime.datetime):
            if obj.tzinfo is not None:
                obj = obj.astimezone(datetime.UTC).replace(tzinfo=None)
            return {_CLASS_KEY: "dt", "obj": obj.strftime(DATETIME_FORMAT)}
        if isinstance(obj, datetime.date):
            return {_CLASS_KEY: "date", "obj": obj.strftime(DATE_FORMAT)}
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return {_CLASS_KEY: "b64", "obj": base64.b64encode(bytes(obj)).decode("ascii")}
        if isinstance(obj, (set, frozenset)):
            # DIRAC's DEncode sent sets as lists; keep that for JSON too.
            return list(obj)
        cls = type(obj)
        if self._by_name.get((cls.__module__, cls.__name__)) is cls:
            to_json = getattr(obj, "_toJSON", None)
            if to_json is not None:
                data = dict(to_json())
            else:
                data = {name: getattr(obj, name, None) for name in cls._attrToSerialize}  # type: ignore[attr-defined]
            data[_CLASS_KEY] = cls.__name__
            data[_MODULE_KEY] = cls.__module__
            return data
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} is not JEncode-serializable")

    # -- decoding ---------------------------------------------------------------------
    def decode(self, text: str | bytes) -> Any:
        """Decode a JEncode JSON string (or UTF-8 bytes)."""
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as e:
                raise CodecError(f"not UTF-8: {e}") from e
        try:
            return self._decoder.decode(text)
        except CodecError:
            raise
        except (ValueError, TypeError, KeyError, binascii.Error) as e:
            raise CodecError(f"invalid JEncode data: {e}") from e
        except RecursionError:
            raise CodecError("invalid JEncode data: nested too deeply") from None

    def _object_hook(self, data: dict[str, Any]) -> Any:
        kind = data.get(_CLASS_KEY)
        if kind is None:
            return data
        if kind == "dt":
            return datetime.datetime.strptime(data["obj"], DATETIME_FORMAT)
        if kind == "date":
            return datetime.datetime.strptime(data["obj"], DATE_FORMAT).date()
        if kind == "b64":
            return base64.b64decode(data["obj"], validate=True)
        module = data.get(_MODULE_KEY)
        cls = self._by_name.get((str(module), str(kind)))
        if cls is None:
            raise CodecError(f"object class {module}.{kind} is not registered with this service")
        attrs = {k: v for k, v in data.items() if k not in (_CLASS_KEY, _MODULE_KEY)}
        from_json = getattr(cls, "_fromJSON", None)
        if from_json is not None:
            return from_json(attrs)
        obj = cls()
        allowed = set(getattr(cls, "_attrToSerialize", ()))
        for name, value in attrs.items():
            if name in allowed:
                setattr(obj, name, value)
        return obj


_DEFAULT = JCodec()


def encode(obj: Any) -> str:
    """JEncode ``obj`` with no object classes registered."""
    return _DEFAULT.encode(obj)


def decode(text: str | bytes) -> Any:
    """Decode JEncode text with no object classes registered."""
    return _DEFAULT.decode(text)

