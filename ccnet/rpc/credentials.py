"""The DIRAC credential dict of a caller, and who the caller acts as.

Pure module.  Built from the verified certificate :class:`~ccnet.identity.Identity`, the
users mapping and the optional ``extraCredentials`` form field, following
``DIRAC.Core.DISET.AuthManager``:

* no certificate (anonymous listener) or an unknown DN -> ``username: anonymous``,
  ``group: visitor``;
* ``extraCredentials = "hosts"``: a registered host certificate acting as a host
  (group ``hosts``); any other certificate sending it (DIRAC clients with
  ``useCertificates=True`` do) is anonymous/visitor, as in DIRAC;
* ``extraCredentials = [DN, group]``: delegation, honoured only when the caller holds the
  ``TrustedHost`` property; from anybody else it is refused (401, as DIRAC does).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509

from ccnet.identity import ANONYMOUS_GROUP, ANONYMOUS_USER, Identity, UserMap, UserRecord, dn_slash

__all__ = ["HOSTS_GROUP", "TRUSTED_HOST", "Credentials", "CredentialsError", "build_credentials"]

TRUSTED_HOST = "TrustedHost"
HOSTS_GROUP = "hosts"


class CredentialsError(Exception):
    """The caller's credentials cannot be accepted (the server answers 401)."""


@dataclass(frozen=True)
class Credentials:
    """Who is calling: the DIRAC dict for handlers plus what authorization needs."""

    cred_dict: dict[str, Any]
    identity: Identity | None  # the TLS peer (the host, for delegated calls)
    record: UserRecord | None  # the user the call acts as, None when anonymous

    @property
    def label(self) -> str:
        """Short text for log lines: ``username@group (DN)``."""
        dn = self.cred_dict.get("DN") or "no certificate"
        return f"{self.cred_dict['username']}@{self.cred_dict['group']} ({dn})"


@functools.lru_cache(maxsize=256)
def _slash(name: x509.Name) -> str:
    # Pure memo: the same few issuer names come with every call.
    return dn_slash(name)


def _lookup_dn(users: UserMap, peer: Identity, dn: str) -> UserRecord | None:
    # UserMap looks identities up by their DN or dotted form; a delegated caller is
    # known only by DN, so ask with the peer identity carrying that DN.
    return users.lookup(dataclasses.replace(peer, dn=dn, subject_dn=dn, dotted="\0"))


def build_credentials(
    identity: Identity | None,
    users: UserMap,
    extra_credentials: Any = None,
    *,
    allow_proxies: bool = True,
    now: Callable[[], datetime] | None = None,
) -> Credentials:
    """Credentials for one call; raise :class:`CredentialsError` when they are refused.

    ``extra_credentials`` is the already-decoded ``extraCredentials`` field (None when
    the client did not send it).
    """
    if identity is None:
        cred = {
            "DN": "",
            "subject": "",
            "issuer": "",
            "identity": "",
            "isProxy": False,
            "isLimitedProxy": False,
            "secondsLeft": 0,
            "username": ANONYMOUS_USER,
            "group": ANONYMOUS_GROUP,
            "properties": [],
            "validDN": False,
            "validGroup": False,
        }
        if extra_credentials is not None:
            cred["extraCredentials"] = extra_credentials
            if isinstance(extra_credentials, (list, tuple)):
                raise CredentialsError("delegated credentials need a trusted host certificate")
        return Credentials(cred, None, None)

    if identity.is_proxy and not allow_proxies:
        raise CredentialsError("proxy certificates are not accepted by this service")

    leaf = identity.chain[0] if identity.chain else None
    cred = {
        "DN": identity.dn,
        "subject": identity.subject_dn,
        "issuer": _slash(leaf.issuer) if leaf is not None else identity.issuer_dn,
        "identity": identity.dn,
        "isProxy": identity.is_proxy,
        "isLimitedProxy": identity.is_limited_proxy,
        "secondsLeft": identity.seconds_left(now() if now is not None else None),
    }
    record = users.lookup(identity)

    if extra_credentials is not None:
        cred["extraCredentials"] = extra_credentials
    if isinstance(extra_credentials, (list, tuple)):
        if record is None or TRUSTED_HOST not in record.properties:
            raise CredentialsError("delegated credentials are only accepted from a TrustedHost")
        if len(extra_credentials) != 2 or not all(isinstance(x, str) for x in extra_credentials):
            raise CredentialsError("extraCredentials must be [DN, group]")
        dn, group = extra_credentials
        cred["DN"] = dn
        delegated = _lookup_dn(users, identity, dn)
        if delegated is None:
            record = None
        else:
            if group not in delegated.groups:
                raise CredentialsError(f"{dn} is not a member of group {group}")
            # The delegating host vouches for one group: rules see only that one.
            record = dataclasses.replace(delegated, group=group, groups=frozenset({group}))
    elif extra_credentials == HOSTS_GROUP and record is not None:
        if HOSTS_GROUP in record.groups:
            record = dataclasses.replace(record, group=HOSTS_GROUP)
        else:
            # DIRAC's AuthManager: a certificate that is not a registered host asking to act
            # as one is not a valid host; it goes on as anonymous/visitor, so methods open
            # to "all" still answer and everything else is refused (401).
            record = None
    elif extra_credentials is not None and not isinstance(extra_credentials, str):
        raise CredentialsError("extraCredentials must be \"hosts\" or [DN, group]")

    if record is None:
        cred.update(
            username=ANONYMOUS_USER,
            group=ANONYMOUS_GROUP,
            properties=[],
            validDN=False,
            validGroup=False,
        )
    else:
        cred.update(
            username=record.username,
            group=record.group,
            properties=sorted(record.properties),
            validDN=True,
            validGroup=record.group in record.groups,
        )
    return Credentials(cred, identity, record)
