"""Plans of the DNS tasks on the real machines' facts: unbound on dns, every host's resolver.

The real inventory's hosts and addresses (inventory.py): pve .10, ageis-node .20, embedder .30,
monitoring .40, dns .50 in 192.168.1.0/24; the machines' resolvers before the rollout are the
router, 192.168.1.1 (machines.py). Data variants run the same deploy over a copy of the real
inventory with one key changed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tasks.common.datamodel.keys import DataError
from tasks.services.dns_resolver import PORTS
from tests.plan.harness import REPO, Plan, inventory_copy

INVENTORY = {
    "pve": "192.168.1.10",
    "ageis-node": "192.168.1.20",
    "embedder": "192.168.1.30",
    "monitoring": "192.168.1.40",
    "dns": "192.168.1.50",
}
DROP_IN = "/etc/unbound/unbound.conf.d/homelab.conf"
STAGED = "/etc/homelab/staged/etc_unbound_unbound.conf.d_homelab.conf"
GROUPS = "(hypervisor, ageis_node, embedder, monitoring, dns)"


def unbound_conf(plan: Plan) -> str:
    return plan.upload("dns", STAGED)


def with_data(tmp_path: Path, **overrides: object) -> str:
    """A copy of the real inventory with ``overrides`` on every host; its path."""
    change = (
        f"for _group in {GROUPS}:\n"
        "    for _name, _data in _group:\n"
        f"        _data.update({overrides!r})\n\n"
    )
    return inventory_copy(tmp_path, change)


# --- unbound on the dns host -----------------------------------------------------------------


def test_local_zone_has_every_inventory_host_with_a_and_ptr(full: Plan) -> None:
    conf = unbound_conf(full)
    assert 'local-zone: "home.arpa." static' in conf
    assert 'local-zone: "1.168.192.in-addr.arpa." static' in conf
    for name, address in INVENTORY.items():
        assert f'local-data: "{name}.home.arpa. IN A {address}"' in conf, name
        assert f'local-data-ptr: "{address} {name}.home.arpa."' in conf, name
    # Nothing else: the zone is the inventory, not a hand-kept list.
    assert len(re.findall(r"^\s*local-data:", conf, re.M)) == len(INVENTORY)
    assert len(re.findall(r"^\s*local-data-ptr:", conf, re.M)) == len(INVENTORY)


def test_only_localhost_lan_and_tailnet_may_query(full: Plan) -> None:
    lines = re.findall(r"^\s*access-control: (.+)$", unbound_conf(full), re.M)
    assert lines == [
        "0.0.0.0/0 refuse",
        "::/0 refuse",
        "127.0.0.0/8 allow",
        "::1/128 allow",
        "192.168.1.0/24 allow",
        "100.64.0.0/10 allow",
        "fd7a:115c:a1e0::/48 allow",
    ]


def test_full_recursion_by_default(full: Plan) -> None:
    conf = unbound_conf(full)
    assert "forward-zone:" not in conf
    assert 'root-hints: "/usr/share/dns/root.hints"' in conf


def test_forwarders_from_data(plan_of, tmp_path: Path) -> None:
    forwarding = plan_of(
        "deploys/full.py",
        inventory_file=with_data(tmp_path, dns_forwarders=["9.9.9.9", "149.112.112.112"]),
    )
    conf = unbound_conf(forwarding)
    assert re.search(
        r'^forward-zone:\n    name: "\."\n    forward-addr: 9\.9\.9\.9\n'
        r"    forward-addr: 149\.112\.112\.112\n",
        conf,
        re.M,
    ), conf
    assert "root-hints" not in conf
    # Validation stays on behind forwarders.
    assert 'module-config: "validator iterator"' in conf


def test_bad_forwarder_is_refused_before_anything_runs(plan_of, tmp_path: Path) -> None:
    with pytest.raises(BaseException) as caught:
        plan_of("deploys/full.py", inventory_file=with_data(tmp_path, dns_forwarders=["9.9.9"]))
    text = str(getattr(caught.value, "message", caught.value))
    assert "dns_forwarders[0]" in text and "'9.9.9'" in text and "IPv4 address" in text


def test_dnssec_validation_is_on_with_debians_trust_anchor(full: Plan) -> None:
    conf = unbound_conf(full)
    assert 'module-config: "validator iterator"' in conf
    assert "harden-dnssec-stripped: yes" in conf
    install = full.commands("dns")
    assert any("install --no-install-recommends unbound dns-root-data" in c for c in install)


def test_config_goes_live_only_through_unbound_checkconf(full: Plan) -> None:
    commands = full.commands("dns")
    checked = [c for c in commands if c.startswith("/usr/local/sbin/install-checked-config")]
    checked = [c for c in checked if "unbound" in c]
    assert checked == [
        f"/usr/local/sbin/install-checked-config {STAGED} {DROP_IN} 644"
        f" /usr/local/sbin/unbound-check-staged {{}} {DROP_IN}"
    ]
    checker = full.upload("dns", "/usr/local/sbin/unbound-check-staged")
    assert 'unbound-checkconf "$tmp/unbound.conf"' in checker
    # unbound restarts only when the checked install changed the config.
    assert full.op("dns", "Restart unbound for its new config").conditional
    assert "systemctl start unbound.service" in commands


def _unbound_setup(commands: list[str]) -> bool:
    """Commands that install or configure unbound (monitoring's probe of it does not count)."""
    monitoring_config = "upload /etc/homelab/staged/etc_prometheus"
    return any("unbound" in c and not c.startswith(monitoring_config) for c in commands)


def test_unbound_only_on_the_dns_host(full: Plan, plan_of) -> None:
    for name in INVENTORY:
        assert _unbound_setup(full.commands(name)) == (name == "dns"), name
    services = plan_of("deploys/services.py")
    assert any("unbound dns-root-data" in c for c in services.commands("dns"))
    assert not _unbound_setup(services.commands("monitoring"))


def test_dns_ports_are_declared() -> None:
    assert {(p.port, p.proto) for p in PORTS} == {(53, "udp"), (53, "tcp")}


# --- every host's resolver -------------------------------------------------------------------


def test_debian_hosts_get_resolv_conf_with_the_dns_host_first(full: Plan) -> None:
    for name in ("pve", "embedder", "monitoring"):
        assert full.upload(name, "/etc/resolv.conf").splitlines()[-4:] == [
            "search home.arpa",
            "nameserver 192.168.1.50",
            "nameserver 192.168.1.1",
            "options timeout:1 attempts:2",
        ], name
        assert not any("resolved.conf.d" in c for c in full.commands(name))


def test_dns_host_asks_itself_first(full: Plan) -> None:
    servers = re.findall(r"^nameserver (\S+)", full.upload("dns", "/etc/resolv.conf"), re.M)
    assert servers == ["127.0.0.1", "192.168.1.1"]


def test_ubuntu_with_resolved_gets_a_drop_in_not_a_resolv_conf(full: Plan) -> None:
    drop_in = full.upload("ageis-node", "/etc/systemd/resolved.conf.d/homelab.conf")
    assert drop_in.splitlines()[-4:] == [
        "[Resolve]",
        "DNS=192.168.1.50 192.168.1.1",
        "FallbackDNS=192.168.1.1",
        "Domains=home.arpa ~.",
    ]
    commands = full.commands("ageis-node")
    assert not any(c.startswith("upload /etc/resolv.conf") for c in commands)
    restart = [
        op
        for op in full.for_host("ageis-node")
        if "systemctl restart systemd-resolved.service" in op.commands
    ]
    assert len(restart) == 1 and restart[0].conditional


def test_lxc_guests_keep_proxmox_off_their_resolv_conf(full: Plan) -> None:
    for name in INVENTORY:
        touched = "touch /etc/.pve-ignore.resolv.conf" in full.commands(name)
        assert touched == (name in ("monitoring", "dns")), name


def test_fallbacks_from_data_replace_the_hosts_own(plan_of, tmp_path: Path) -> None:
    plan = plan_of(
        "deploys/full.py", inventory_file=with_data(tmp_path, dns_fallback_servers=["9.9.9.9"])
    )
    servers = re.findall(r"^nameserver (\S+)", plan.upload("embedder", "/etc/resolv.conf"), re.M)
    assert servers == ["192.168.1.50", "9.9.9.9"]
    drop_in = plan.upload("ageis-node", "/etc/systemd/resolved.conf.d/homelab.conf")
    assert "DNS=192.168.1.50 9.9.9.9\n" in drop_in


def test_no_fallback_when_data_says_none(plan_of, tmp_path: Path) -> None:
    plan = plan_of("deploys/full.py", inventory_file=with_data(tmp_path, dns_fallback_servers=[]))
    servers = re.findall(r"^nameserver (\S+)", plan.upload("embedder", "/etc/resolv.conf"), re.M)
    assert servers == ["192.168.1.50"]


def test_more_nameservers_than_glibc_reads_is_a_clear_error(plan_of, tmp_path: Path) -> None:
    four = ["9.9.9.9", "149.112.112.112", "1.1.1.1"]
    with pytest.raises(BaseException) as caught:
        plan_of("deploys/full.py", inventory_file=with_data(tmp_path, dns_fallback_servers=four))
    error = getattr(caught.value, "exception", caught.value)
    assert isinstance(error, DataError), repr(error)
    assert error.key == "dns_fallback_servers" and error.given == four
    assert "at most 2 addresses" in error.expected and "only 3 nameservers" in error.expected


def test_a_converged_host_changes_nothing(full: Plan, plan_of, fleet) -> None:
    """Second run: the files the first plan writes are on the machines; nothing changes."""
    resolv = full.upload("embedder", "/etc/resolv.conf")
    drop_in = full.upload("ageis-node", "/etc/systemd/resolved.conf.d/homelab.conf")
    conf = unbound_conf(full)
    fleet["embedder"].files["/etc/resolv.conf"] = resolv
    fleet["ageis-node"].files["/etc/systemd/resolved.conf.d/homelab.conf"] = drop_in
    # resolved now lists the drop-in's servers before the link's.
    fleet["ageis-node"].files["/run/systemd/resolve/resolv.conf"] = (
        "nameserver 192.168.1.50\nnameserver 192.168.1.1\nsearch home.arpa\n"
    )
    dns = fleet["dns"]
    dns.files.update(
        {
            "/etc/resolv.conf": full.upload("dns", "/etc/resolv.conf"),
            "/etc/.pve-ignore.resolv.conf": "",
            STAGED: conf,
            DROP_IN: conf,
            "/usr/local/sbin/unbound-check-staged": (
                REPO / "files/unbound-check-staged"
            ).read_text(),
            "/usr/local/sbin/install-checked-config": (
                REPO / "files/install-checked-config"
            ).read_text(),
        }
    )
    dns.modes.update(
        {
            STAGED: 600,
            "/etc/homelab/staged": 700,
            "/usr/local/sbin/unbound-check-staged": 755,
            "/usr/local/sbin/install-checked-config": 755,
        }
    )
    dns.directories |= {"/etc/homelab/staged", "/usr/local/sbin"}
    dns.packages.update({"unbound": "1.26.2-0+deb13u1", "dns-root-data": "2025080400~deb13u1"})
    dns.running["unbound"] = True
    dns.enabled["unbound"] = True
    again = plan_of("deploys/full.py")
    assert again.upload_or_none("embedder", "/etc/resolv.conf") is None
    assert again.upload_or_none("ageis-node", "/etc/systemd/resolved.conf.d/homelab.conf") is None
    assert again.upload_or_none("dns", "/etc/resolv.conf") is None
    assert again.upload_or_none("dns", STAGED) is None
    # Left: the checked install and the restart, both waiting for a change that did not happen
    # (the harness cannot evaluate _if; the lab's second run shows they stay quiet).
    unbound_ops = [op for op in again.for_host("dns") if "DNS resolver (unbound)" in op.name]
    left = [op for op in unbound_ops if op.commands]
    assert [op.commands[0].split()[0:2] for op in left] == [
        ["/usr/local/sbin/install-checked-config", STAGED],
        ["systemctl", "restart"],
    ]
    assert all(op.conditional for op in left)
