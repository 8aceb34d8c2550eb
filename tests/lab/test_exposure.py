"""What each lab host lets in, seen from outside the LAN and from the LAN (after a full rollout).

Two vantage points made for this module, removed afterwards (also when a test fails):

- outside: network namespace ``hlab<id>-scan-out`` on its own subnet (10.214.<id>.0/24), a veth
  pair to this machine, which routes it to the lab (ip_forward is on while the lab is up);
- LAN: network namespace ``hlab<id>-scan-lan`` on the lab bridge with a free LAN address (.250).

From each, nmap SYN-scans all 65535 TCP ports of every lab host. From outside nothing may answer.
The LAN vantage point is an admin source (by default the admin's devices are the LAN) and no
port's consumer: exactly the admin ports must answer (SSH everywhere, the Proxmox UI on pve,
Prometheus' read-only UI), open when something listens, closed when nothing listens yet; every
service port (PostgreSQL, Ollama, actr-engine, the embedder's, the exporters) stays silent.
From each consumer host, a connect to its ports is answered and to others' ports is dropped.
This machine does not connection-track the scans' packets (a notrack table of this module's
own), so the 650,000 probes do not fill the conntrack table that the other labs on this machine
share.

A control proves the outside vantage point would see a port the firewall opened to it, and
IPv6 neighbour discovery and ping are shown to pass while the ports stay shut over IPv6.

Then the firewall's safety: a run whose own SSH session the rules would cut is refused before
any change; a broken rule in the data fails the run with nft's error and leaves the loaded
ruleset and the open SSH sessions alone (and the next normal run changes nothing); a hand change
is put back; stopping or restarting nftables.service leaves other tables alone.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.lab import hosts, labctl
from tests.lab.hosts import LabHost

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")
INVENTORY = "tests/lab/inventory.py"

OUTSIDE_NS = f"hlab{hosts.LAB_ID}-scan-out"
LAN_NS = f"hlab{hosts.LAB_ID}-scan-lan"
OUTSIDE_VETH = f"hs{hosts.LAB_ID}-out"  # this machine's end; the namespace's end is its eth0
LAN_VETH = f"hs{hosts.LAB_ID}-lan"  # plugged into the lab bridge
OUTSIDE_PREFIX = f"10.214.{hosts.LAB_ID}"
OUTSIDE_GATEWAY = f"{OUTSIDE_PREFIX}.1"
OUTSIDE_ADDRESS = f"{OUTSIDE_PREFIX}.2"
LAN_ADDRESS = f"{hosts.NET_PREFIX}.250"
NOTRACK_TABLE = f"inet homelab_scan{hosts.LAB_ID}"
# Every port, one retry, at least 50,000 probes a second: about 15 s for the five hosts.
NMAP_OPTIONS = ("-Pn", "-sS", "-n", "--min-rate", "50000", "--max-retries", "1", "-T4")
ANSWERING = ("open", "closed")


def run(argv: Sequence[str], timeout: float = 120, check: bool = True) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def on(host: LabHost, command: str, check: bool = True) -> str:
    return run(labctl.ssh_argv(host, command), timeout=60, check=check)


# --- the vantage points ----------------------------------------------------------------------


def _remove_vantage_points() -> None:
    for namespace in (OUTSIDE_NS, LAN_NS):  # deleting a namespace deletes its veth pair
        run(["ip", "netns", "del", namespace], check=False)
    for link in (OUTSIDE_VETH, LAN_VETH):
        run(["ip", "link", "del", link], check=False)
    run(["nft", "delete", "table", *NOTRACK_TABLE.split()], check=False)


def _namespace(name: str, veth: str, address: str) -> None:
    run(["ip", "netns", "add", name])
    run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name])
    run(["ip", "-n", name, "addr", "add", f"{address}/24", "dev", "eth0"])
    run(["ip", "-n", name, "link", "set", "eth0", "up"])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


@pytest.fixture(scope="module")
def vantage_points() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.fail("the exposure test needs root (network namespaces, raw sockets)")
    if not Path(f"/sys/class/net/{hosts.BRIDGE}").exists():
        pytest.fail(f"the lab network is down ({hosts.BRIDGE} missing): run labctl up")
    if shutil.which("nmap") is None:
        labctl.ensure_deps()
    if shutil.which("nmap") is None:
        pytest.fail("nmap is missing and labctl could not install it")
    _remove_vantage_points()  # what a killed earlier run may have left
    try:
        _namespace(OUTSIDE_NS, OUTSIDE_VETH, OUTSIDE_ADDRESS)
        run(["ip", "addr", "add", f"{OUTSIDE_GATEWAY}/24", "dev", OUTSIDE_VETH])
        run(["ip", "link", "set", OUTSIDE_VETH, "up"])
        run(["ip", "-n", OUTSIDE_NS, "route", "add", "default", "via", OUTSIDE_GATEWAY])
        _namespace(LAN_NS, LAN_VETH, LAN_ADDRESS)
        run(["ip", "link", "set", LAN_VETH, "master", hosts.BRIDGE])
        run(["ip", "link", "set", LAN_VETH, "up"])
        ours = f"{{ {OUTSIDE_PREFIX}.0/24, {LAN_ADDRESS} }}"
        notrack = (
            f"table {NOTRACK_TABLE} {{\n"
            "  chain prerouting {\n"
            "    type filter hook prerouting priority raw; policy accept;\n"
            f"    ip saddr {ours} notrack\n"
            f"    ip daddr {ours} notrack\n"
            "  }\n"
            "}\n"
        )
        subprocess.run(["nft", "-f", "-"], input=notrack, text=True, check=True)
        yield
    finally:
        _remove_vantage_points()


# --- scanning --------------------------------------------------------------------------------


@dataclass
class HostScan:
    """One host's ports as one scan saw them."""

    address: str
    states: dict[int, str] = field(default_factory=dict)  # ports nmap listed one by one
    collapsed: dict[str, int] = field(default_factory=dict)  # state -> count, not listed

    def ports(self, *states: str) -> set[int]:
        return {port for port, state in self.states.items() if state in states}

    def uncounted(self, *states: str) -> int:
        return sum(count for state, count in self.collapsed.items() if state in states)


@dataclass
class Scan:
    hosts: dict[str, HostScan]
    seconds: float


def parse_nmap_xml(text: str) -> dict[str, HostScan]:
    scans: dict[str, HostScan] = {}
    for element in ET.fromstring(text).iter("host"):
        address = element.find("address[@addrtype='ipv4']")
        if address is None:
            address = element.find("address[@addrtype='ipv6']")
        assert address is not None
        scan = HostScan(address.get("addr", ""))
        for extra in element.iter("extraports"):
            scan.collapsed[extra.get("state", "")] = int(extra.get("count", "0"))
        for port in element.iter("port"):
            state = port.find("state")
            assert state is not None and port.get("protocol") == "tcp"
            scan.states[int(port.get("portid", "0"))] = state.get("state", "")
        scans[scan.address] = scan
    return scans


def nmap(namespace: str, *args: str) -> Scan:
    started = time.monotonic()
    xml = run(["ip", "netns", "exec", namespace, "nmap", *args, "-oX", "-"], timeout=600)
    return Scan(parse_nmap_xml(xml), time.monotonic() - started)


def full_scan(namespace: str) -> Scan:
    return nmap(namespace, *NMAP_OPTIONS, "-p-", *(h.address for h in hosts.HOSTS))


def answers_ping(namespace: str, host: LabHost) -> bool:
    out = run(["ip", "netns", "exec", namespace, "nmap", "-sn", "-PE", "-n", host.address])
    return "Host is up" in out


@pytest.fixture(scope="module")
def outside_scan(vantage_points: None) -> Scan:
    return full_scan(OUTSIDE_NS)


@pytest.fixture(scope="module")
def lan_scan(vantage_points: None) -> Scan:
    return full_scan(LAN_NS)


def admitted_tcp_ports(source: str) -> dict[str, set[int]]:
    """Per lab host, the TCP ports its firewall admits from ``source``, computed as the deploy
    computes them (ports and their consumers, resolved against the lab inventory)."""
    from pyinfra.api import State
    from pyinfra.context import ctx_inventory, ctx_state
    from pyinfra_cli.inventory import make_inventory_from_files

    from deploys.roles import declared_ports
    from tasks.base.firewall import DATA, inventory_addresses, openings, ports_of
    from tasks.common.datamodel.machine import MACHINE

    cwd = Path.cwd()
    os.chdir(REPO)
    try:
        with ctx_state.use(State()):
            inventory = make_inventory_from_files(INVENTORY, cwd=str(REPO))
    finally:
        os.chdir(cwd)
    client = ipaddress.ip_address(source)
    admitted = {}
    with ctx_inventory.use(inventory):
        groups = inventory_addresses()
        for h in inventory:
            machine = MACHINE.read(h)
            opened = openings(
                ports_of(h.name, declared_ports(h.groups), h.data.dict()),
                lan_cidr=machine.lan_cidr,
                admin_sources=DATA.read(h).firewall_admin_sources,
                group_addresses=groups,
                own_address=str(machine.lan_address),
                data=h.data,
                peers={other.name: other.data for other in inventory},
            )
            admitted[h.name] = {
                o.port.port for o in opened if o.port.proto == "tcp" and o.admits(client)
            }
    return admitted


def _table(scan: Scan, title: str) -> str:
    lines = [f"{title} ({scan.seconds:.1f}s for {len(scan.hosts)} hosts x 65535 TCP ports):"]
    for host in hosts.HOSTS:
        seen = scan.hosts[host.address]
        lines.append(
            f"  {host.name:<11} {host.address:<13} open {sorted(seen.ports('open'))}"
            f"  closed {sorted(seen.ports('closed'))}  filtered "
            f"{len(seen.ports('filtered')) + seen.uncounted('filtered')}"
        )
    return "\n".join(lines)


# --- what the scans find ---------------------------------------------------------------------


def test_nothing_answers_from_outside_the_lan(outside_scan: Scan) -> None:
    print("\n" + _table(outside_scan, "from outside the LAN"))
    for host in hosts.HOSTS:
        # The vantage point reaches the host (ping is let in, rate limited): a silent scan
        # means the firewall dropped the probes, not that they went nowhere.
        assert answers_ping(OUTSIDE_NS, host), f"{host.name} is not reachable from outside"
        seen = outside_scan.hosts[host.address]
        answering = seen.ports(*ANSWERING)
        assert not answering, f"{host.name}: ports answer from outside the LAN: {answering}"
        assert seen.uncounted(*ANSWERING) == 0, f"{host.name}: {seen.collapsed}"
        assert len(seen.ports("filtered")) + seen.uncounted("filtered") == 65535


# What an admin device on the LAN may reach, written out by hand: SSH, the Proxmox UI and its
# SPICE proxy, Prometheus' read-only UI. Nothing else, whatever listens.
ADMIN_PORTS = {"pve": {22, 3128, 8006}, "monitoring": {22, 9090}}


def test_lan_sees_exactly_the_admin_ports(lan_scan: Scan) -> None:
    print("\n" + _table(lan_scan, "from the LAN (an admin source, no port's consumer)"))
    admitted = admitted_tcp_ports(LAN_ADDRESS)
    for host in hosts.HOSTS:
        seen = lan_scan.hosts[host.address]
        print(f"  {host.name:<11} admitted {sorted(admitted[host.name])}")
        assert admitted[host.name] == ADMIN_PORTS.get(host.name, {22}), host.name
        assert seen.uncounted(*ANSWERING) == 0, f"{host.name}: {seen.collapsed}"
        assert seen.ports(*ANSWERING) == admitted[host.name], host.name
        assert 22 in seen.ports("open"), f"{host.name}: sshd does not answer from the LAN"


# (from, to, port, answered): each consumer reaches its ports; a LAN host that is not the
# port's consumer is dropped, though the service listens.
CONSUMER_CASES = [
    ("ageis-node", "embedder", 8300, True),  # embedding server
    ("ageis-node", "embedder", 5500, True),  # TTS
    ("ageis-node", "embedder", 9310, False),  # vector indexer: monitoring only
    ("monitoring", "embedder", 9310, True),
    ("ageis-node", "embedder", 9311, False),  # document ingester: monitoring only
    ("monitoring", "embedder", 9311, True),
    ("embedder", "ageis-node", 5432, True),  # PostgreSQL: the indexer
    ("embedder", "ageis-node", 8100, False),  # actr-engine: local clients and monitoring
    ("embedder", "ageis-node", 11434, False),  # Ollama: likewise
    ("monitoring", "ageis-node", 8100, True),
    ("pve", "ageis-node", 8432, True),  # pgBackRest's TLS server: the repository host
    ("embedder", "ageis-node", 8432, False),
    ("ageis-node", "pve", 8432, True),  # the repository's TLS server: the database host
    ("embedder", "pve", 8432, False),
    ("embedder", "monitoring", 9093, False),  # Alertmanager: the tailnet only
    ("embedder", "dns", 53, True),  # unbound: every inventory host
]


def connect_from(source: LabHost, target: LabHost, port: int) -> str:
    """'open', 'closed' (refused: answered) or 'dropped' (no answer in 3 s), seen from
    ``source``."""
    rc = on(
        source,
        f"timeout 3 bash -c 'exec 3<>/dev/tcp/{target.address}/{port}' 2>/dev/null; echo $?",
        check=False,
    ).strip()
    return {"0": "open", "1": "closed", "124": "dropped"}.get(rc, f"exit {rc}")


def test_each_consumer_reaches_its_ports_and_only_its_ports(vantage_points: None) -> None:
    seen = {
        (src, dst, port): connect_from(hosts.by_name(src), hosts.by_name(dst), port)
        for src, dst, port, _ in CONSUMER_CASES
    }
    print("\nconsumers:", {f"{s}->{d}:{p}": state for (s, d, p), state in seen.items()})
    for src, dst, port, answered in CONSUMER_CASES:
        expected = "open" if answered else "dropped"
        assert seen[(src, dst, port)] == expected, f"{src} -> {dst}:{port}"


@contextmanager
def ssh_open_to_outside(host: LabHost) -> Iterator[str]:
    """A hand-made rule letting the outside subnet reach the host's SSH, removed afterwards.

    Yields the rule's comment."""
    comment = f"exposure-test-{uuid.uuid4().hex[:8]}"
    added = on(
        host,
        f"nft --echo --handle insert rule inet homelab input ip saddr {OUTSIDE_PREFIX}.0/24 "
        f"tcp dport 22 accept comment '\"{comment}\"'",
    )
    handle = added.split("# handle")[1].split()[0]
    try:
        yield comment
    finally:
        on(host, f"nft delete rule inet homelab input handle {handle}")


def test_the_outside_vantage_point_sees_a_port_the_firewall_opens(vantage_points: None) -> None:
    """The control: open one port to the outside subnet by hand, and the scan must see it."""
    host = hosts.by_name("embedder")
    with ssh_open_to_outside(host) as comment:
        seen = nmap(OUTSIDE_NS, *NMAP_OPTIONS, "-p", "22", host.address)
        assert seen.hosts[host.address].ports("open") == {22}
    assert comment not in on(host, "nft list table inet homelab")


def test_ipv6_neighbour_discovery_and_ping_pass_but_no_port(vantage_points: None) -> None:
    """IPv6 on the LAN: neighbour discovery and ping pass the firewall; the ports do not (the
    LAN is lan_cidr, IPv4; over IPv6 the declared ports are open on the tailnet only)."""
    host = hosts.by_name("embedder")
    prefix = f"fd00:213:{hosts.LAB_ID}::"
    # Compressed as ip(8) prints them (lab 0's fd00:213:0::250 is fd00:213::250).
    ours, theirs = (
        ipaddress.IPv6Address(f"{prefix}{suffix}").compressed
        for suffix in ("250", host.address.rsplit(".", 1)[1])
    )
    on(host, f"ip -6 addr add {theirs}/64 dev host0 nodad")
    try:
        run(["ip", "-n", LAN_NS, "-6", "addr", "add", f"{ours}/64", "dev", "eth0", "nodad"])
        # Each side must resolve the other's link-layer address first (NS in, NA back in).
        ping = run(["ip", "netns", "exec", LAN_NS, "ping", "-6", "-c", "2", "-W", "2", theirs])
        assert " 0% packet loss" in ping, ping
        neighbours = on(host, "ip -6 neigh show dev host0")
        assert ours in neighbours, neighbours
        ssh_v6 = nmap(LAN_NS, "-6", *NMAP_OPTIONS, "-p", "22", theirs).hosts[theirs]
        assert not ssh_v6.ports(*ANSWERING)
        assert len(ssh_v6.ports("filtered")) + ssh_v6.uncounted("filtered") == 1
    finally:
        on(host, f"ip -6 addr del {theirs}/64 dev host0", check=False)


# --- the firewall keeps itself and others safe -----------------------------------------------


def pyinfra(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PYINFRA), "-y", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        env=os.environ.copy(),
    )


def changed_operations(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{") :])["results"]
    assert report["failed_hosts"] == [] and report["totals"]["error"] == 0
    return [f"{op['name']}: {op['success']}" for op in report["operations"] if op["success"]]


def listing(host: LabHost) -> str:
    return on(host, "nft -s list table inet homelab")


def test_a_run_whose_session_the_rules_would_cut_is_refused(vantage_points: None) -> None:
    """pyinfra from outside the LAN (let in by a hand-made rule) must stop before any change."""
    host = hosts.by_name("embedder")
    with ssh_open_to_outside(host):
        before = listing(host)
        result = subprocess.run(
            ["ip", "netns", "exec", OUTSIDE_NS, str(PYINFRA), "-y", "--limit", host.name,
             INVENTORY, "deploys/full.py"],
            cwd=REPO, capture_output=True, text=True, timeout=600, env=os.environ.copy(),
        )  # fmt: skip
        output = result.stdout + result.stderr
        refusal = f"Firewall on host '{host.name}' not applied, nothing was touched"
        print("\n" + next((line for line in output.splitlines() if refusal in line), output))
        assert result.returncode != 0
        assert refusal in output and f"comes from {OUTSIDE_ADDRESS}" in output
        assert listing(host) == before  # the hand-made rule is still there: nothing was loaded


def test_a_table_changed_by_hand_is_put_back() -> None:
    host = hosts.by_name("monitoring")
    before = listing(host)
    on(host, "nft delete table inet homelab")
    assert "inet homelab" not in on(host, "nft list tables")
    changed = changed_operations(
        pyinfra("--json", "--limit", host.name, INVENTORY, "deploys/full.py")
    )
    assert len(changed) == 1 and "Load the firewall" in changed[0], changed
    assert listing(host) == before


def test_stopping_nftables_removes_only_our_table() -> None:
    host = hosts.by_name("dns")
    before = listing(host)
    foreign = "inet exposure_test_foreign"  # stands for Tailscale's or Proxmox's tables
    on(host, f"nft add table {foreign}")
    try:
        on(host, "systemctl restart nftables")  # what a package upgrade does
        tables = on(host, "nft list tables")
        assert foreign in tables and "inet homelab" in tables
        on(host, "systemctl stop nftables")
        tables = on(host, "nft list tables")
        assert foreign in tables and "inet homelab" not in tables
    finally:
        on(host, "systemctl start nftables")
        on(host, f"nft delete table {foreign}", check=False)
    assert listing(host) == before


@pytest.fixture
def ssh_sessions(tmp_path: Path) -> Iterator[dict[str, list[str]]]:
    """One open SSH connection (a control master) per host, held across the test."""
    masters: dict[str, list[str]] = {}
    try:
        for host in hosts.HOSTS:
            through = [
                *labctl.ssh_command(host)[:-1],
                "-o",
                f"ControlPath={tmp_path}/{host.name}.sock",
                labctl.ssh_command(host)[-1],
            ]
            run([*through[:-1], "-o", "ControlMaster=yes", "-o", "ControlPersist=300", "-fN",
                 through[-1]])  # fmt: skip
            masters[host.name] = through
        yield masters
    finally:
        for through in masters.values():
            run([*through[:-1], "-O", "exit", through[-1]], check=False)


def test_a_broken_rule_fails_the_run_and_touches_nothing(
    ssh_sessions: dict[str, list[str]],
) -> None:
    before = {host.name: listing(host) for host in hosts.HOSTS}
    started = time.monotonic()
    result = pyinfra(
        INVENTORY, "deploys/full.py", "--data", 'firewall_extra_rules=["tcp dport 22 acept"]'
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    print(f"\nrun with a broken rule: exit {result.returncode} after {elapsed:.1f}s")
    print("\n".join(line for line in output.splitlines() if "Error" in line or "its check" in line))
    assert result.returncode != 0
    assert "Error: syntax error" in output and "tcp dport 22 acept" in output
    assert "failed its check (nft -c -f" in output and "/etc/nftables.conf left unchanged" in output
    for host in hosts.HOSTS:
        through = ssh_sessions[host.name]
        # The connection opened before the run is still up and still carries commands.
        run([*through[:-1], "-O", "check", through[-1]])
        still = run([*through, labctl.as_root(host, "nft -s list table inet homelab")])
        assert still == before[host.name], f"{host.name}: the loaded ruleset changed"
        assert "acept" not in on(host, "cat /etc/nftables.conf")
    changed = changed_operations(pyinfra("--json", INVENTORY, "deploys/full.py"))
    assert changed == [], "a normal rollout after the failed one changed:\n" + "\n".join(changed)
