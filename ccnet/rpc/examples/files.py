"""``Framework/Files``: download files from one folder with DIRAC's ``receiveFile``.

::

    [rpc:Framework/Files]
    class = ccnet.rpc.examples.files:FilesService
    root = /srv/ccnet/files        ; the only folder served (required; relative to the INI file)

``streamToClient(name)`` returns an open file that the server sends with a producer, so a
multi-gigabyte file costs a 64 KB buffer, not its size.  Names are relative to ``root``;
absolute paths, ``..`` and symbolic links leading outside are refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from ccnet.config import SetupError
from ccnet.rpc import S_ERROR, S_OK, RPCService, blocking
from ccnet.rpc.service import safe_path

__all__ = ["FilesService"]


class FilesService(RPCService):
    """Read-only file service: ``listFiles``, ``getFileSize``, ``streamToClient``."""

    auth_Default: ClassVar[list[str]] = ["authenticated"]
    types_streamToClient: ClassVar[list[Any]] = [str]
    types_getFileSize: ClassVar[list[Any]] = [str]

    root: ClassVar[Path]

    @classmethod
    @blocking
    def initializeHandler(cls, serviceInfo: dict[str, Any]) -> None:  # noqa: N802, N803
        root = cls.srv_getCSPath("root")
        if root is None:
            raise SetupError(f"[rpc:{serviceInfo['serviceName']}] needs root = <folder>")
        path = root.resolve()
        if not path.is_dir():
            raise SetupError(f"[rpc:{serviceInfo['serviceName']}] root {path} is not a folder")
        cls.root = path

    @blocking
    def export_listFiles(self, folder: str = "") -> dict[str, Any]:  # noqa: N802
        """Regular files directly under ``folder`` (relative to root): name -> size."""
        base = self.root if not folder else safe_dir(self.root, folder)
        if base is None:
            return S_ERROR(f"no such folder: {folder}")
        return S_OK({e.name: e.stat().st_size for e in os.scandir(base) if e.is_file()})

    @blocking
    def export_getFileSize(self, name: str) -> dict[str, Any]:  # noqa: N802
        path = safe_path(self.root, name)
        if path is None:
            return S_ERROR(f"no such file: {name}")
        return S_OK(path.stat().st_size)

    @blocking
    def export_streamToClient(self, name: str, *ignored: Any) -> Any:  # noqa: N802
        path = safe_path(self.root, name)
        if path is None:
            return S_ERROR(f"no such file: {name}")
        return open(path, "rb")  # noqa: SIM115 (closed by the response producer)


def safe_dir(root: Path, relative: str) -> Path | None:
    """A folder inside ``root`` or None."""
    if os.path.isabs(relative) or "\0" in relative:
        return None
    candidate = (root / relative).resolve()
    try:
        candidate.relative_to(root)
    except ValueError:
        return None
    return candidate if candidate.is_dir() else None
