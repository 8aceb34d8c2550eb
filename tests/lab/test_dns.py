"""The lab's DNS for real: unbound on the dns host, every host's resolver config, DNSSEC.

Runs against the rolled-out lab (``make lab``). What the lab's upstream allows decides what
DNSSEC can show: this machine's resolver (the lab's only upstream; the root servers are out of
reach) strips DNSSEC, so ``test_upstream_dnssec`` records that finding and asserts what a
validating resolver must do behind such an upstream (refuse, with an Extended DNS Error), and
signed stand-in zones (``dnssec_standin.py``) show validation itself: a good signature gives
the AD flag, a bad one SERVFAIL. Each fixture puts back what it changed; the last tests bring
unbound back through a rollout and check that the next run changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pyinfra.api import State
from pyinfra.context import ctx_state
from pyinfra_cli.inventory import make_inventory_from_files

from tests.lab import dnssec_standin, hosts, labctl
from tests.lab.hosts import LabHost
from tests.lab.lab_cli import LABCTL

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")
DNS_HOST = next(h for h in hosts.HOSTS if "dns" in h.groups)
# A LAN client that is no tailnet node: its rollout is the base and its own role.
CLIENT = hosts.by_name("monitoring")
# A network outside the LAN and the tailnet (RFC 2544 benchmarking space), one per lab.
OUTSIDE_NET = f"198.18.{hosts.LAB_ID}"
OUTSIDE_NS = f"hlab{hosts.LAB_ID}-dns-outside"
OUTSIDE_VETH = (f"hl{hosts.LAB_ID}dnso-h", f"hl{hosts.LAB_ID}dnso-n")


@cache
def lab_data() -> dict[str, dict[str, Any]]:
    """Each lab host's merged inventory data, as pyinfra sees it."""
    with ctx_state.use(State()):
        inventory = make_inventory_from_files(str(REPO / "tests/lab/inventory.py"), cwd=str(REPO))
    return {h.name: h.data.dict() for h in inventory}


def domain() -> str:
    return lab_data()[DNS_HOST.name].get("domain", "home.arpa")


def on(
    host: LabHost, command: str, *, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    feed: dict[str, Any] = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    result = subprocess.run(
        labctl.ssh_argv(host, command),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **feed,
    )
    if check:
        assert result.returncode == 0, f"{host.name}: {command!r} failed:\n{result.stderr}"
    return result


def status_of(dig_output: str) -> str:
    match = re.search(r"status: ([A-Z]+)", dig_output)
    return match.group(1) if match else "NO ANSWER"


def flags_of(dig_output: str) -> set[str]:
    match = re.search(r";; flags: ([a-z ]+);", dig_output)
    return set(match.group(1).split()) if match else set()


def rollout(*args: str) -> dict[str, Any]:
    """A pyinfra run over the lab with --json; its results (must exit 0)."""
    result = subprocess.run(
        [str(PYINFRA), "-y", "--json", "tests/lab/inventory.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        env=os.environ.copy(),
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout[result.stdout.index("{") :])["results"]


def changed_ops(report: dict[str, Any]) -> list[str]:
    return [op["name"] for op in report["operations"] if op["success"]]


def mirror_name(host: LabHost) -> str:
    """The Debian mirror's host name as the host's own APT sources name it (read, not known)."""
    sources = "/etc/apt/sources.list /etc/apt/sources.list.d/"
    uris = on(host, f"grep -rhoE 'https?://[^ ]+' {sources} 2>/dev/null || true").stdout.split()
    names = [urlsplit(uri).hostname for uri in uris]
    assert names, f"{host.name}: no URIs in its APT sources"
    return str(names[0])


def upstream() -> str:
    return next(s for s in labctl.host_nameservers() if ":" not in s)


# --- every host resolves every host through unbound -------------------------------------------


def lookups(source: LabHost, dns: str) -> dict[tuple[str, str], str]:
    """Every lab host looked up from ``source`` in one SSH session: (target, kind) -> output.

    Kinds: ``explicit`` (asked of the dns host by FQDN), ``own`` (the short name through the
    host's own resolv.conf: search domain and first nameserver), ``ptr`` (reverse, dns host).
    """
    script = ""
    for target in hosts.HOSTS:
        fqdn = f"{target.name}.{domain()}"
        script += (
            f"echo '@@ {target.name} explicit'; dig +short @{dns} {fqdn} A;"
            f" echo '@@ {target.name} own'; dig +search {target.name} A;"
            f" echo '@@ {target.name} ptr'; dig +short @{dns} -x {target.address};"
        )
    sections: dict[tuple[str, str], str] = {}
    for chunk in on(source, script).stdout.split("@@ ")[1:]:
        head, _, body = chunk.partition("\n")
        name, kind = head.split()
        sections[(name, kind)] = body
    return sections


def test_every_host_resolves_every_host_through_unbound() -> None:
    dns = DNS_HOST.address
    problems = []
    for source in hosts.HOSTS:
        first = "127.0.0.1" if source is DNS_HOST else dns
        resolv = on(source, "cat /etc/resolv.conf").stdout
        servers = re.findall(r"^nameserver\s+(\S+)", resolv, re.M)
        if not servers or servers[0] != first:
            problems.append(f"{source.name}: resolv.conf servers {servers}, expected {first} first")
        found = lookups(source, dns)
        for target in hosts.HOSTS:
            fqdn = f"{target.name}.{domain()}"
            explicit = found[(target.name, "explicit")].split()
            own = found[(target.name, "own")]
            answers = re.findall(rf"^{re.escape(fqdn)}\.\s+\d+\s+IN\s+A\s+(\S+)", own, re.M)
            server = re.search(r"^;; SERVER: ([0-9.]+)#53", own, re.M)
            ptr = found[(target.name, "ptr")].split()
            if explicit != [target.address]:
                problems.append(f"{source.name}: @{dns} {fqdn} -> {explicit}")
            if answers != [target.address] or not server or server.group(1) != first:
                problems.append(f"{source.name}: {target.name} via its resolv.conf -> {own}")
            if ptr != [f"{fqdn}."]:
                problems.append(f"{source.name}: PTR of {target.address} -> {ptr}")
    assert not problems, "\n".join(problems)


def test_names_outside_the_inventory_are_nxdomain_in_the_local_zone() -> None:
    out = on(CLIENT, f"dig @{DNS_HOST.address} no-such-host.{domain()} A").stdout
    assert status_of(out) == "NXDOMAIN", out
    assert "aa" in flags_of(out), "the local zone answers authoritatively"


# --- DNSSEC ------------------------------------------------------------------------------------


def test_upstream_dnssec() -> None:
    """What the lab's upstream allows, and that unbound validates behind it.

    Behind an upstream that passes DNSSEC, a signed name comes back with the AD flag. Behind
    one that strips it (this lab's), the chain of trust from the root cannot be built, and a
    validating resolver must refuse: SERVFAIL with an Extended DNS Error, while the data is
    there with checking disabled (+cd). Clients then fall back to their next server.
    """
    name = mirror_name(DNS_HOST)
    upstream_root = on(DNS_HOST, f"dig +dnssec +cd @{upstream()} . DNSKEY").stdout
    passes_dnssec = bool(re.search(r"^\.\s+\d+\s+IN\s+RRSIG\s+DNSKEY", upstream_root, re.M))
    root = on(DNS_HOST, "dig +dnssec @127.0.0.1 . SOA").stdout
    answer = on(DNS_HOST, f"dig +dnssec @127.0.0.1 {name} A").stdout
    unchecked = on(DNS_HOST, f"dig +dnssec +cd @127.0.0.1 {name} A").stdout
    print(
        f"upstream {upstream()} passes DNSSEC: {passes_dnssec}; through unbound: '. SOA'"
        f" {status_of(root)} flags {sorted(flags_of(root))}; {name} {status_of(answer)}"
        f" {re.findall(r'EDE: .*', answer)}; with +cd {status_of(unchecked)}"
    )
    if passes_dnssec:
        assert status_of(root) == "NOERROR" and "ad" in flags_of(root), root
        assert status_of(answer) == "NOERROR", answer
        return
    # The finding in this lab: the upstream's answers carry no RRSIG and it has no DNSKEY for
    # the root, so nothing can validate; unbound refuses instead of passing unchecked data.
    assert status_of(answer) == "SERVFAIL", answer
    assert re.search(r"EDE: (9 \(DNSKEY Missing\)|6 \(DNSSEC Bogus\))", answer), answer
    assert status_of(unchecked) == "NOERROR", unchecked
    assert re.search(rf"^{re.escape(name)}\.\s+\d+\s+IN\s+A\s", unchecked, re.M), unchecked
    # ... and a client still resolves the name, through its fallback server.
    resolved = on(CLIENT, f"getent ahosts {name}")
    assert resolved.stdout.strip(), f"{CLIENT.name} cannot resolve {name} through its fallback"


@pytest.fixture(scope="module")
def standin_zones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list]:
    """Signed stand-in zones served and trusted by the lab's unbound for the module's tests."""
    zones = dnssec_standin.build(tmp_path_factory.mktemp("dnssec"), DNS_HOST.address)
    remote = dnssec_standin.REMOTE_DIR
    try:
        on(DNS_HOST, f"install -d -m 755 {remote}")
        # umask 022: unbound reads them as its own user (a hardened host's umask is 027).
        for zone in zones:
            on(DNS_HOST, f"umask 022; cat > {remote}/{zone.name}zone", stdin=zone.signed)
            on(DNS_HOST, f"umask 022; cat > {remote}/{zone.name}ds", stdin=zone.ds)
        conf = dnssec_standin.drop_in(zones)
        on(DNS_HOST, f"umask 022; cat > {dnssec_standin.DROP_IN}", stdin=conf)
        on(DNS_HOST, "unbound-checkconf && systemctl restart unbound")
        yield zones
    finally:
        on(DNS_HOST, f"rm -rf {remote} {dnssec_standin.DROP_IN}", check=False)
        on(DNS_HOST, "unbound-checkconf && systemctl restart unbound")
        on(DNS_HOST, "systemctl is-active unbound")


def test_dnssec_signed_name_validates(standin_zones: list) -> None:
    valid = next(z for z in standin_zones if z.name.startswith("valid."))
    # From a LAN client through its own resolver config (the dns host first).
    out = on(CLIENT, f"dig +dnssec {valid.www} A").stdout
    print(out)
    assert status_of(out) == "NOERROR", out
    assert "ad" in flags_of(out), f"no AD flag: not validated\n{out}"
    assert re.search(rf"IN\s+A\s+{dnssec_standin.SIGNED_ADDRESS}", out), out
    assert re.search(r"IN\s+RRSIG\s+A ", out), out


def test_dnssec_bogus_signature_is_refused(standin_zones: list) -> None:
    bogus = next(z for z in standin_zones if z.name.startswith("bogus."))
    out = on(CLIENT, f"dig +dnssec @{DNS_HOST.address} {bogus.www} A").stdout
    print(out)
    assert status_of(out) == "SERVFAIL", out
    assert "EDE: 6 (DNSSEC Bogus)" in out, out
    assert dnssec_standin.TAMPERED_ADDRESS not in out
    # The data is there; only validation keeps it out.
    unchecked = on(CLIENT, f"dig +dnssec +cd @{DNS_HOST.address} {bogus.www} A").stdout
    assert status_of(unchecked) == "NOERROR", unchecked
    assert dnssec_standin.TAMPERED_ADDRESS in unchecked, unchecked


@pytest.mark.parametrize(
    "bad_line, why",
    [
        ("    no-such-option: yes", "unknown keyword"),
        ('    module-config: "iterator"', "no DNSSEC validation"),
        ('    local-zone: "example." no-such-type', "local-zone type"),
    ],
)
def test_a_broken_unbound_config_never_goes_live(bad_line: str, why: str) -> None:
    """The rollout's own check (install-checked-config + unbound-check-staged) on a bad drop-in:
    refused with the reason, the live config and the running unbound untouched."""
    live = "/etc/unbound/unbound.conf.d/homelab.conf"
    before = on(DNS_HOST, f"sha1sum {live}").stdout
    staged = on(DNS_HOST, "mktemp /etc/homelab/staged/test-dns.XXXXXX").stdout.strip()
    try:
        on(DNS_HOST, f"cp {live} {staged} && printf 'server:\\n%s\\n' '{bad_line}' >> {staged}")
        result = on(
            DNS_HOST,
            f"/usr/local/sbin/install-checked-config {staged} {live} 644"
            f" /usr/local/sbin/unbound-check-staged {{}} {live}",
            check=False,
        )
    finally:
        on(DNS_HOST, f"rm -f {staged}", check=False)
    assert result.returncode != 0, result.stdout + result.stderr
    assert why in result.stderr and f"{live} left unchanged" in result.stderr, result.stderr
    assert on(DNS_HOST, f"sha1sum {live}").stdout == before
    assert on(DNS_HOST, "systemctl is-active unbound").stdout.strip() == "active"
    answer = on(DNS_HOST, f"dig +short @127.0.0.1 {DNS_HOST.name}.{domain()}").stdout.split()
    assert answer == [DNS_HOST.address]


# --- access control --------------------------------------------------------------------------


@pytest.fixture
def outside_netns() -> Iterator[str]:
    """A network namespace on another subnet (OUTSIDE_NET), routed to the lab; always removed."""
    host_end, ns_end = OUTSIDE_VETH

    def ip(*args: str, check: bool = True) -> None:
        subprocess.run(["ip", *args], check=check, capture_output=True, text=True)

    ip("netns", "del", OUTSIDE_NS, check=False)
    ip("link", "del", host_end, check=False)
    try:
        ip("netns", "add", OUTSIDE_NS)
        ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        ip("link", "set", ns_end, "netns", OUTSIDE_NS)
        ip("addr", "add", f"{OUTSIDE_NET}.1/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("-n", OUTSIDE_NS, "addr", "add", f"{OUTSIDE_NET}.2/30", "dev", ns_end)
        ip("-n", OUTSIDE_NS, "link", "set", ns_end, "up")
        ip("-n", OUTSIDE_NS, "link", "set", "lo", "up")
        ip("-n", OUTSIDE_NS, "route", "add", hosts.SUBNET, "via", f"{OUTSIDE_NET}.1")
        yield OUTSIDE_NS
    finally:
        ip("netns", "del", OUTSIDE_NS, check=False)
        ip("link", "del", host_end, check=False)


def test_query_from_outside_the_lan_gets_no_answer(outside_netns: str) -> None:
    """Refused by unbound (REFUSED), or dropped by the host's firewall: never answered."""
    name = f"pve.{domain()}"
    reach = subprocess.run(
        ["ip", "netns", "exec", outside_netns, "ping", "-c1", "-W2", DNS_HOST.address],
        capture_output=True,
        text=True,
        check=False,
    )
    assert reach.returncode == 0, f"the outside namespace cannot reach the lab: {reach.stdout}"
    query = subprocess.run(
        ["ip", "netns", "exec", outside_netns, "drill", f"@{DNS_HOST.address}", name],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # drill: "rcode: REFUSED" when unbound says no; an error and no header when nothing came.
    rcode = re.search(r"rcode: ([A-Z]+)", query.stdout)
    print(f"from {OUTSIDE_NET}.2: {rcode.group(1) if rcode else 'no reply (dropped)'}")
    assert rcode is None or rcode.group(1) == "REFUSED", query.stdout
    # The same query from the LAN is answered: the difference is the source, not the name.
    lan = on(CLIENT, f"dig @{DNS_HOST.address} {name} A").stdout
    assert status_of(lan) == "NOERROR", lan


@pytest.fixture
def foreign_sources() -> Iterator[dict[str, str]]:
    """Extra source addresses on the dns host's loopback: one outside every allowed range,
    one in the tailnet's. They reach unbound past any firewall (loopback is trusted), so what
    answers is unbound's own access control."""
    sources = {"outside": "192.0.2.53", "tailnet": "100.64.0.53"}
    try:
        for address in sources.values():
            on(DNS_HOST, f"ip addr add {address}/32 dev lo")
        yield sources
    finally:
        for address in sources.values():
            on(DNS_HOST, f"ip addr del {address}/32 dev lo", check=False)


def test_unbound_refuses_sources_outside_lan_and_tailnet(foreign_sources: dict[str, str]) -> None:
    name = f"pve.{domain()}"
    dns = DNS_HOST.address
    outside = on(DNS_HOST, f"dig -b {foreign_sources['outside']} @{dns} {name} A").stdout
    tailnet = on(DNS_HOST, f"dig -b {foreign_sources['tailnet']} @{dns} {name} A").stdout
    lan = on(DNS_HOST, f"dig -b {dns} @{dns} {name} A").stdout
    assert status_of(outside) == "REFUSED", outside
    assert status_of(tailnet) == "NOERROR", tailnet
    assert status_of(lan) == "NOERROR", lan


# --- a dead resolver does not stop a rollout ---------------------------------------------------


def timed_lookup(host: LabHost, name: str) -> float:
    """Seconds ``getent ahosts name`` takes on ``host`` (measured there, not over SSH)."""
    result = on(
        host,
        f"s=$(date +%s%N); getent ahosts {name} >/dev/null; rc=$?;"
        " e=$(date +%s%N); echo $rc $(( (e - s) / 1000000 ))",
    )
    rc, millis = result.stdout.split()
    assert rc == "0", f"{host.name}: {name} does not resolve"
    return int(millis) / 1000


def test_stopped_unbound_does_not_break_a_rollout() -> None:
    name = mirror_name(CLIENT)
    on(DNS_HOST, "systemctl stop unbound")
    try:
        down = on(CLIENT, f"dig +time=1 +tries=1 @{DNS_HOST.address} pve.{domain()}", check=False)
        assert "status: NOERROR" not in down.stdout, "unbound still answers"
        lookup = timed_lookup(CLIENT, name)
        report = rollout("deploys/full.py", "--limit", CLIENT.name)
        assert report["failed_hosts"] == [] and report["totals"]["error"] == 0
        # An operation that needs name resolution: apt straight to the mirror, not the proxy.
        apt = rollout(
            "--limit",
            CLIENT.name,
            "exec",
            "--",
            "apt-get -o Acquire::http::Proxy=DIRECT -o Acquire::https::Proxy=DIRECT update",
        )
        assert apt["failed_hosts"] == [] and apt["totals"]["error"] == 0
        print(f"unbound stopped: {name} resolved on {CLIENT.name} in {lookup:.2f}s (fallback)")
        assert lookup < 1.0, "a stopped unbound (port unreachable) should cost no timeout"
    finally:
        try:
            back = rollout("deploys/full.py", "--limit", DNS_HOST.name)
        finally:
            # Whatever that rollout did, the tests after this one find unbound running.
            on(DNS_HOST, "systemctl is-active unbound || systemctl start unbound", check=False)
    assert back["failed_hosts"] == [] and back["totals"]["error"] == 0
    assert "DNS resolver (unbound) | Run unbound" in changed_ops(back), changed_ops(back)
    assert on(DNS_HOST, "systemctl is-active unbound").stdout.strip() == "active"
    again = rollout("deploys/full.py", "--limit", DNS_HOST.name)
    assert again["totals"]["success"] == 0, changed_ops(again)


def test_dead_dns_host_costs_about_a_second_a_lookup() -> None:
    """The dns host off (plug pulled): the first server times out (timeout:1), the next answers."""
    name = mirror_name(CLIENT)
    subprocess.run([*LABCTL, "kill", DNS_HOST.name], check=True, capture_output=True)
    try:
        lookup = timed_lookup(CLIENT, name)
        print(f"dns host down: {name} resolved on {CLIENT.name} in {lookup:.2f}s (fallback)")
        assert 0.5 < lookup < 3.0, f"{lookup:.2f}s"
    finally:
        subprocess.run([*LABCTL, "start", DNS_HOST.name], check=True, capture_output=True)
        subprocess.run([*LABCTL, "wait", DNS_HOST.name], check=True, capture_output=True)
    # Back after the power cut by itself (enabled at boot), before any rollout.
    assert on(DNS_HOST, "systemctl is-active unbound").stdout.strip() == "active"
    rollout("deploys/full.py", "--limit", DNS_HOST.name)
    assert on(DNS_HOST, "systemctl is-active unbound").stdout.strip() == "active"
    again = rollout("deploys/full.py", "--limit", DNS_HOST.name)
    assert again["totals"]["success"] == 0, changed_ops(again)
