"""Authorization maps (RI users.conf/caps.conf and SDK [Roles]/[Authorizations]) and [supervisor] config."""

from __future__ import annotations

from pathlib import Path

from twisted.trial import unittest

from ccnet.config import ConfigError, IniFile
from ccnet.mplane import config as mconfig
from ccnet.mplane.authz import AuthzError, IdentityClaims, Policy, parse_caps_file, parse_roles_file

RI_USERS = "# users\norg.mplane.PKI.Clients.Client-1: guest\norg.mplane.PKI.Clients.Admin: guest, admin\n"
RI_CAPS = """\
#
# Probe 1
#
tstat-log_tcp_complete-core, org.mplane.PKI.Components.Component-1: admin
tstat-log_tcp_complete-end_to_end, org.mplane.PKI.Components.Component-1: guest, admin
ping: guest
"""
SDK_CONF = """\
[TLS]
cert = x
[Roles]
IT.mPlane.Clients.Client-1 = guest,admin
IT.mPlane.Supervisors.Supervisor-1 = supervisor
[Authorizations]
ping-average-ip4 = guest
ping-detail = admin
"""


class RoleFileTests(unittest.TestCase):
    def test_ri_users_file(self) -> None:
        roles = parse_roles_file(RI_USERS)
        self.assertEqual(roles["org.mplane.PKI.Clients.Admin"], {"guest", "admin"})

    def test_sdk_roles_section_is_case_sensitive_and_stripped(self) -> None:
        roles = parse_roles_file(SDK_CONF)
        self.assertEqual(roles["IT.mPlane.Clients.Client-1"], {"guest", "admin"})

    def test_ri_caps_file_with_component(self) -> None:
        rules = parse_caps_file(RI_CAPS)
        self.assertEqual(rules[0].label, "tstat-log_tcp_complete-core")
        self.assertEqual(rules[0].component, "org.mplane.PKI.Components.Component-1")
        self.assertIsNone(rules[2].component)

    def test_malformed_line_names_file_and_line(self) -> None:
        with self.assertRaises(AuthzError) as cm:
            parse_roles_file("ok: a\nthis line has no separator\n", "users.conf")
        self.assertIn("users.conf:2", str(cm.exception))


class PolicyTests(unittest.TestCase):
    def setUp(self) -> None:
        self.policy = Policy.from_strings(RI_USERS, RI_CAPS, admin_role="root")

    def roles(self, ident: str) -> frozenset[str]:
        return self.policy.roles_of([ident])

    def test_substring_label_rule_like_the_sdk(self) -> None:
        guest = self.roles("org.mplane.PKI.Clients.Client-1")
        self.assertTrue(self.policy.allows(guest, "ping-average-ip4", "any.component"))
        self.assertFalse(self.policy.allows(guest, "traceroute", "any.component"))

    def test_component_specific_rule_applies_to_that_component_only(self) -> None:
        guest = self.roles("org.mplane.PKI.Clients.Client-1")
        comp1 = "org.mplane.PKI.Components.Component-1"
        self.assertFalse(self.policy.allows(guest, "tstat-log_tcp_complete-core", comp1))
        self.assertTrue(self.policy.allows(guest, "tstat-log_tcp_complete-end_to_end", comp1))
        self.assertFalse(self.policy.allows(guest, "tstat-log_tcp_complete-core", "other.component"))

    def test_unknown_identity_is_denied(self) -> None:
        self.assertFalse(self.policy.allows(self.roles("nobody"), "ping-average-ip4", "c"))

    def test_admin_role_sees_everything(self) -> None:
        self.assertTrue(self.policy.allows(frozenset({"root"}), "anything", "c"))

    def test_longest_matching_label_decides(self) -> None:
        policy = Policy.from_strings("u: guest\nv: admin\n", "ping: guest\nping-detail: admin\n")
        self.assertFalse(policy.allows(policy.roles_of(["u"]), "ping-detail-ip4", "c"))
        self.assertTrue(policy.allows(policy.roles_of(["v"]), "ping-detail-ip4", "c"))
        self.assertTrue(policy.allows(policy.roles_of(["u"]), "ping-average-ip4", "c"))

    def test_sdk_config_file_serves_as_both_maps(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        conf = folder / "supervisor.conf"
        conf.write_text(SDK_CONF)
        policy = Policy.from_files(None, conf)
        roles = policy.roles_of(["IT.mPlane.Clients.Client-1"])
        self.assertTrue(policy.allows(roles, "ping-average-ip4", "c"))
        self.assertTrue(policy.allows(roles, "ping-detail-ip4", "c"))

    def test_roles_from_daemon_users_map_are_added(self) -> None:
        self.assertTrue(self.policy.allows(self.policy.roles_of(["nobody"], extra={"guest"}), "ping-x", "c"))


class SupervisorConfigTests(unittest.TestCase):
    def test_defaults_equal_the_sdk_paths(self) -> None:
        cfg = mconfig.parse(IniFile.from_string("[supervisor]\n"))
        assert cfg is not None
        self.assertEqual(cfg.listen, "ssl:8888")
        self.assertEqual((cfg.registration_path, cfg.specification_path, cfg.result_path),
                         ("register/capability", "show/specification", "register/result"))
        self.assertEqual((cfg.client_capability_path, cfg.client_specification_path, cfg.client_result_path),
                         ("show/capability", "register/specification", "show/result"))
        self.assertEqual(cfg.sdk_capability_path, "capability")

    def test_absent_section_is_none(self) -> None:
        self.assertIsNone(mconfig.parse(IniFile.from_string("[rpc]\n")))

    def test_durations_and_paths(self) -> None:
        cfg = mconfig.parse(IniFile.from_string(
            "[supervisor]\nlong-poll = 30s\nresult-expiry = 2d\nregistration-path = /reg/\n"))
        assert cfg is not None
        self.assertEqual(cfg.long_poll, 30.0)
        self.assertEqual(cfg.result_expiry, 2 * 86400.0)
        self.assertEqual(cfg.registration_path, "reg")

    def test_mistakes_name_the_key(self) -> None:
        for text, key in [("long-poll = soon", "long-poll"), ("result-path = register/capability", "result-path"),
                          ("url = http://x", "url"), ("colour = blue", "colour")]:
            with self.assertRaises(ConfigError) as cm:
                mconfig.parse(IniFile.from_string(f"[supervisor]\n{text}\n"))
            self.assertIn(key, str(cm.exception))

    def test_documented_example_parses(self) -> None:
        import re

        doc = (Path(__file__).resolve().parent.parent / "docs" / "mplane.md").read_text()
        block = next(b for b in re.findall(r"```ini\n(.*?)```", doc, re.S) if "[supervisor]" in b)
        folder = Path(self.mktemp()).resolve()
        folder.mkdir()
        for name in ("mplane-users.conf", "mplane-caps.conf"):
            (folder / name).write_text("")
        text = block.replace("/etc/ccnet/", f"{folder}/")
        ini = IniFile.from_string("[supervisor]" + text.split("[supervisor]")[1])
        cfg = mconfig.parse(ini)
        assert cfg is not None
        self.assertEqual((cfg.listen, cfg.admin_role, cfg.long_poll, cfg.result_expiry),
                         ("ssl:8888", "admin", 20.0, 7 * 86400.0))


class IdentityClaimsTests(unittest.TestCase):
    def test_first_subject_keeps_a_dotted_identity(self) -> None:
        claims = IdentityClaims()
        self.assertIsNone(claims.conflict("IT.ccnet.Clients.client", "/C=IT/O=ccnet/OU=Clients/CN=client"))
        self.assertEqual(claims.conflict("IT.ccnet.Clients.client", "/C=IT/O=ccnet/CN=Clients.client"),
                         "/C=IT/O=ccnet/OU=Clients/CN=client")

    def test_a_bound_peer_wins_over_a_lookalike_seen_first(self) -> None:
        claims = IdentityClaims()
        claims.conflict("IT.ccnet.Supervisors.supervisor", "/C=IT/O=ccnet/CN=Supervisors.supervisor")
        claims.bind("IT.ccnet.Supervisors.supervisor", "/C=IT/O=ccnet/OU=Supervisors/CN=supervisor")
        self.assertIsNotNone(claims.conflict("IT.ccnet.Supervisors.supervisor", "/C=IT/O=ccnet/CN=Supervisors.supervisor"))
        self.assertIsNone(claims.conflict("IT.ccnet.Supervisors.supervisor",
                                          "/C=IT/O=ccnet/OU=Supervisors/CN=supervisor"))
