"""Stand-in DNSSEC-signed zones for the lab, so validation is tested for real.

The lab's only upstream is this machine's resolver, which strips DNSSEC (no RRSIG, no DNSKEY,
not even for the root; see tests/lab/test_dns.py), so no name on the internet can validate
through it. The lab therefore signs two zones of its own with a fresh ED25519 key each
(``ldns-keygen``/``ldns-signzone`` from ldnsutils, on this machine):

- ``valid.<PARENT>``: correctly signed; unbound must answer with the AD flag;
- ``bogus.<PARENT>``: signed, then one record altered after signing; unbound must refuse it
  (SERVFAIL, EDE "DNSSEC Bogus") while ``+cd`` (checking disabled) shows the data is there.

unbound on the DNS host serves both as ``auth-zone`` with ``for-upstream: yes`` (it resolves
them as if from an authoritative server, and validates what it gets) and trusts each zone's
key by a ``trust-anchor-file`` (DS record): the same validator path as the root's chain.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PARENT = "homelab-lab-dnssec"
ZONES = ("valid", "bogus")
# Where the zones live on the DNS host while a test runs; removed afterwards.
REMOTE_DIR = "/var/lib/unbound/homelab-lab-dnssec"
DROP_IN = "/etc/unbound/unbound.conf.d/zz-homelab-lab-dnssec.conf"
SIGNED_ADDRESS = "192.0.2.10"
TAMPERED_ADDRESS = "192.0.2.66"


@dataclass(frozen=True)
class StandinZone:
    name: str  # "valid.homelab-lab-dnssec."
    signed: str  # the signed zone file's text
    ds: str  # the DS record of its key (the trust anchor)

    @property
    def www(self) -> str:
        return f"www.{self.name}"


def _run(args: list[str], cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def build(workdir: Path, nameserver: str) -> list[StandinZone]:
    """Sign the two zones in ``workdir``; ``nameserver`` is the DNS host's address (NS glue)."""
    zones = []
    for label in ZONES:
        name = f"{label}.{PARENT}."
        zone_file = workdir / f"{label}.zone"
        zone_file.write_text(
            f"$ORIGIN {name}\n$TTL 300\n"
            "@ IN SOA ns hostmaster 1 3600 600 86400 300\n"
            "@ IN NS ns\n"
            f"ns IN A {nameserver}\n"
            f"www IN A {SIGNED_ADDRESS}\n"
        )
        key = _run(["ldns-keygen", "-a", "ED25519", "-k", name], workdir)
        # Signatures valid for ten years (RRSIG times compare within 68 years of now).
        expires = time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() + 10 * 365 * 86400))
        _run(["ldns-signzone", "-e", expires, zone_file.name, key], workdir)
        ds = _run(["ldns-key2ds", "-n", "-2", f"{key}.key"], workdir)
        signed = (workdir / f"{label}.zone.signed").read_text()
        if label == "bogus":
            signed = _tamper(signed, f"www.{name}")
        zones.append(StandinZone(name, signed, ds + "\n"))
    return zones


def _tamper(signed: str, owner: str) -> str:
    """Change the A record of ``owner`` after signing, keeping its (now wrong) signature."""
    lines = []
    changed = 0
    for line in signed.splitlines():
        words = line.split()
        if len(words) >= 5 and words[0] == owner and words[2:4] == ["IN", "A"]:
            line = line.replace(SIGNED_ADDRESS, TAMPERED_ADDRESS)
            changed += 1
        lines.append(line)
    if changed != 1:
        raise RuntimeError(f"expected one A record of {owner} to tamper with, found {changed}")
    return "\n".join(lines) + "\n"


def drop_in(zones: list[StandinZone]) -> str:
    """The unbound drop-in that serves the zones and trusts their keys."""
    text = "# homelab-as-code lab test (tests/lab/dnssec_standin.py); removed after the test.\n"
    text += "server:\n"
    for zone in zones:
        text += f'    trust-anchor-file: "{REMOTE_DIR}/{zone.name}ds"\n'
    for zone in zones:
        text += (
            "auth-zone:\n"
            f'    name: "{zone.name}"\n'
            f'    zonefile: "{REMOTE_DIR}/{zone.name}zone"\n'
            "    for-downstream: no\n"
            "    for-upstream: yes\n"
        )
    return text
