"""pgBackRest, the parts both hosts share: the memory store's WAL archive and its backups.

A dedicated repository host (the hypervisor, ``pgbackrest_repository_host``) keeps the
repository in ``<pools[pgbackrest_repository_pool].path>/pgbackrest``
(``tasks/hypervisor/pgbackrest_repository.py``); the database host archives to it and proves
its backups restore (``tasks/ageis_node/pgbackrest_database.py``). This module holds what both
sides read: the data keys and the secret, the TLS material, the facts, and the install.

The two hosts talk over
pgBackRest's own TLS server (port 8432 on both, client certificates checked against a small CA,
``tls-server-auth`` naming the one peer and the stanza): no SSH keys between the hosts. The CA
and the hosts' certificates are made on the controller from the secret ``pgbackrest_tls_seed``
(Ed25519 keys derived from it, certificates with fixed fields: the same seed gives the same
files on every run, so nothing changes on a second run and no CA file has to be kept
anywhere else; a new seed re-keys everything).

pgBackRest's versions must be equal on both hosts (its TLS protocol refuses a mixed pair):
Debian 12 ships 2.45, Debian 13 (Proxmox VE 9) 2.55, Ubuntu 24.04 2.50. So by default
(``pgbackrest_source = "pgdg"``) both hosts install pgBackRest from the PostgreSQL Global
Development Group's repository (apt.postgresql.org): its signing key checked by fingerprint
(``apt_keys.py``), a deb822 source ``<codename>-pgdg`` that names that key and, with it,
PGDG's archive (apt-archive.postgresql.org, suite ``<codename>-pgdg-archive``, same key), and an
apt pin that takes exactly ``pgbackrest_version`` of pgBackRest from PGDG (priority 1001: apt
installs, keeps and, if need be, downgrades to it) while PGDG's other packages, from either
site, get priority 100, so PGDG never replaces or upgrades the distribution's PostgreSQL.
PGDG's index lists only its newest build of each package; the archive lists every build it
ever published, so a pin of an older release still resolves: a host rebuilt alone (a lost SSD)
gets the very version the other host runs. One data key, read by both hosts, gives both the
identical version; data that gives the two hosts different versions or sources stops the run.
``pgbackrest_source = "distribution"`` keeps the distribution's package and checks at plan
time, from both hosts' facts when both are in the run, that the versions they run (or would
install) are equal. Options used here exist in 2.45 and later; every pgBackRest command runs as
the repository's or PostgreSQL's user (2.59.0 and later refuse root for all but restore).
"""

from __future__ import annotations

import datetime
import hmac
import json
import re
from dataclasses import dataclass
from io import StringIO
from typing import Any
from urllib.parse import urlsplit

from pyinfra import host, inventory, state
from pyinfra.api import FactBase
from pyinfra.api.host import Host
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, server, systemd

from tasks.common.apt_keys import Fingerprint, verified_keyring
from tasks.common.changes import changed
from tasks.common.datamodel.forms import ABSOLUTE_PATH, CALENDAR, HOSTNAME, Int, Optional, Str
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import AGEIS_NODE, EMBEDDER, HYPERVISOR, MACHINE, POOL_NAME
from tasks.common.datamodel.secrets import Secret, SecretSpec, load_secrets
from tasks.common.secret_files import secret_file
from tasks.common.templating import file_path, template_path

TLS_PORT = 8432
CONF = "/etc/pgbackrest/pgbackrest.conf"
TLS_DIR = "/etc/pgbackrest/tls"
REPO_USER = "pgbackrest"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
BACKUP_SCRIPT = "/usr/local/sbin/pgbackrest-run"
STANZA_SCRIPT = "/usr/local/sbin/pgbackrest-stanza-ready"
RESTORE_TEST_SCRIPT = "/usr/local/sbin/memory-store-restore-test"
METRICS_SCRIPT = "/usr/local/sbin/memory-store-metrics"
INSTALL_SCRIPT = "/usr/local/sbin/pgbackrest-install"
PGDG_KEYRING = "/usr/share/keyrings/pgdg-archive-keyring.gpg"
PGDG_SOURCES = "/etc/apt/sources.list.d/pgdg.sources"
PGDG_PIN = "/etc/apt/preferences.d/pgdg-pgbackrest.pref"
# Distributions PGDG's repository serves (os-release ID); Proxmox VE reports debian.
PGDG_DISTROS = ("debian", "ubuntu")
SOURCES = ("pgdg", "distribution")
CIPHERS = ("aes-256-cbc", "none")
CIPHER_CONF = "/etc/pgbackrest/conf.d/homelab-cipher.conf"

# pgBackRest's own version (upstream, without the packaging revision): 2.50, 2.55.1, 2.59.2.
UPSTREAM_VERSION = Str(
    r"[0-9]+\.[0-9]+(\.[0-9]+)?", what='a pgBackRest release such as "2.59.2" (no package revision)'
)
HTTPS_URL = Str(r"https://[^\s]+", what="an https URL")

DATA = Schema(
    "pgbackrest",
    Key(
        "pgbackrest_source",
        Str(choices=SOURCES),
        "pgdg",
        'Where pgBackRest comes from on both hosts: "pgdg" (apt.postgresql.org, exactly'
        ' pgbackrest_version) or "distribution" (the release\'s own package; the deploy checks'
        " that both hosts' versions are equal). Must be the same for both hosts.",
        (AGEIS_NODE, HYPERVISOR),
    ),
    Key(
        "pgbackrest_version",
        UPSTREAM_VERSION,
        "2.59.2",
        'pgBackRest release both hosts install from PGDG (pgbackrest_source "pgdg"): pinned, so'
        " both run the identical version, and a host rebuilt alone gets the other's. PGDG's"
        " archive (pgbackrest_pgdg_archive_url) keeps every build, so an older release still"
        " installs. Must be the same for both hosts.",
        (AGEIS_NODE, HYPERVISOR),
    ),
    Key(
        "pgbackrest_pgdg_url",
        HTTPS_URL,
        "https://apt.postgresql.org/pub/repos/apt",
        "PGDG's apt repository (suite <codename>-pgdg, component main): only its newest builds.",
        (AGEIS_NODE, HYPERVISOR),
    ),
    Key(
        "pgbackrest_pgdg_archive_url",
        Optional(HTTPS_URL),
        "https://apt-archive.postgresql.org/pub/repos/apt",
        "PGDG's archive (suite <codename>-pgdg-archive, same signing key): every build PGDG"
        " published, so pgbackrest_version need not be PGDG's newest. None: PGDG's index only"
        " (then pgbackrest_version must be the build it lists).",
        (AGEIS_NODE, HYPERVISOR),
    ),
    Key(
        "pgbackrest_pgdg_key_url",
        HTTPS_URL,
        "https://www.postgresql.org/media/keys/ACCC4CF8.asc",
        "Where PGDG's repository signing key is downloaded from.",
        (AGEIS_NODE, HYPERVISOR),
    ),
    Key(
        "pgbackrest_pgdg_key_fingerprint",
        Fingerprint(),
        "B97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF8",
        "Fingerprint the downloaded PGDG key must have (PostgreSQL Debian Repository key).",
        (AGEIS_NODE, HYPERVISOR),
    ),
    Key(
        "pgbackrest_stanza",
        Str(r"[a-z][a-z0-9_-]*", what='a stanza name such as "memory"'),
        "memory",
        "pgBackRest stanza of the memory store.",
        (AGEIS_NODE, HYPERVISOR),
    ),
    Key(
        "pgbackrest_repository_host",
        Optional(HOSTNAME),
        None,
        "Inventory host that keeps the repository; None: the hypervisor.",
        (AGEIS_NODE, HYPERVISOR),
    ),
    Key(
        "pgbackrest_repository_pool",
        POOL_NAME,
        "hdd",
        "The repository host's pool that holds the repository (<pool path>/pgbackrest).",
        (HYPERVISOR,),
    ),
    Key(
        "pgbackrest_repository_cipher",
        Str(choices=CIPHERS),
        "aes-256-cbc",
        "Encryption of the repository (repo1-cipher-type), with the secret"
        " pgbackrest_repository_cipher_pass. Fixed when the stanza is created: a run whose value"
        " differs from an existing repository's stops before any change.",
        (HYPERVISOR,),
    ),
    Key(
        "pgbackrest_archive_timeout",
        Int(1, 3600),
        60,
        "archive_timeout in seconds: a WAL segment is closed and archived at least this often,"
        " so losing the SSD loses at most about this much.",
        (AGEIS_NODE,),
    ),
    Key(
        "pgbackrest_spool_path",
        ABSOLUTE_PATH,
        "/var/spool/pgbackrest",
        "Async archive-push spool on the database host.",
        (AGEIS_NODE,),
    ),
    Key(
        "pgbackrest_process_max",
        Int(1, 64),
        2,
        "Parallel processes for backup, restore and async archiving.",
        (AGEIS_NODE, HYPERVISOR),
    ),
    Key(
        "pgbackrest_retention_full",
        Int(1, 100),
        2,
        "Full backups kept (older ones expire with the WAL only they need).",
        (HYPERVISOR,),
    ),
    Key(
        "pgbackrest_retention_diff",
        Int(1, 100),
        6,
        "Differential backups kept.",
        (HYPERVISOR,),
    ),
    Key(
        "pgbackrest_full_schedule",
        CALENDAR,
        "Sun *-*-* 01:30:00",
        "When a full backup runs (systemd OnCalendar=).",
        (HYPERVISOR,),
    ),
    Key(
        "pgbackrest_diff_schedule",
        CALENDAR,
        "Mon..Sat *-*-* 01:30:00",
        "When a differential backup runs (systemd OnCalendar=).",
        (HYPERVISOR,),
    ),
    Key(
        "pgbackrest_verify_schedule",
        CALENDAR,
        "Sun *-*-* 05:00:00",
        "When pgbackrest verify checks the whole repository (weekly).",
        (HYPERVISOR,),
    ),
    Key(
        "memory_store_restore_test_schedule",
        CALENDAR,
        "*-*-* 03:30:00",
        "When the restore test runs on the database host (daily).",
        (AGEIS_NODE,),
    ),
    Key(
        "memory_store_restore_test_path",
        Optional(ABSOLUTE_PATH),
        None,
        "Scratch directory of the restore test; None: <postgresql_pool path>/restore-test.",
        (AGEIS_NODE,),
    ),
)

SECRETS = (
    SecretSpec(
        "pgbackrest_tls_seed",
        (AGEIS_NODE, HYPERVISOR, EMBEDDER),
        "seed of the memory store's TLS: pgBackRest's CA and host keys, PostgreSQL's CA and"
        " server key (any long random string; a new one re-keys every host that uses them)",
        "seed",
    ),
    SecretSpec(
        "pgbackrest_repository_cipher_pass",
        (HYPERVISOR,),
        "passphrase the pgBackRest repository is encrypted with (any long random string;"
        " fixed when the repository is created: without it the backups cannot be read, so keep"
        " a copy outside the homelab)",
        "passphrase",
        needed=lambda data: data.get("pgbackrest_repository_cipher", "aes-256-cbc") != "none",
    ),
)


# --- certificates, derived from the seed --------------------------------------------------


@dataclass(frozen=True)
class HostTls:
    ca_cert: str
    cert: str
    key: str


_NOT_BEFORE = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(2125, 1, 1, tzinfo=datetime.UTC)


# The order of NIST P-256's group: a derived ECDSA key is a scalar in [1, order - 1].
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _derived_key(seed: str, label: str, ecdsa: bool = False) -> Any:
    """An Ed25519 key (or, ``ecdsa``, a P-256 one) derived from the seed under ``label``."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = hmac.new(seed.encode(), f"homelab pgbackrest {label}".encode(), "sha256").digest()
    if ecdsa:
        scalar = int.from_bytes(raw, "big") % (_P256_ORDER - 1) + 1
        return ec.derive_private_key(scalar, ec.SECP256R1())
    return Ed25519PrivateKey.from_private_bytes(raw)


def _serial(seed: str, label: str) -> int:
    digest = hmac.new(seed.encode(), f"serial {label}".encode(), "sha256").digest()
    return int.from_bytes(digest[:16], "big") >> 1  # positive, < 2**127


# Each purpose has a CA of its own, derived from the same seed under its own labels: a
# certificate of one never passes as the other's. (purpose -> label prefix, CA common name,
# ECDSA). PostgreSQL's are ECDSA P-256 signed with SHA-256: libpq's SCRAM channel binding
# (tls-server-end-point) hashes the server certificate with its signature's digest, and
# Ed25519 has none ("could not find digest for NID UNDEF"); the signatures are deterministic
# (RFC 6979), so the same seed still gives the same files.
PURPOSES = {
    "pgbackrest": ("", "homelab-as-code pgBackRest CA", False),
    "postgresql": ("postgresql ", "homelab-as-code memory store CA", True),
    # The WAL receivers' spool (tasks/common/wal_stream.py): server and client, like pgBackRest's.
    "wal-spool": ("wal-spool ", "homelab-as-code WAL spool CA", True),
}


def host_tls(
    seed: str,
    name: str,
    domain: str,
    purpose: str = "pgbackrest",
    addresses: tuple[str, ...] = (),
) -> HostTls:
    """The CA certificate, ``name``'s certificate and its private key, for ``purpose``.

    pgBackRest's certificates serve as server and client; PostgreSQL's as server only, with
    ``addresses`` (the IPs clients connect to) among its names for libpq's verify-full.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    prefix, ca_common_name, ecdsa = PURPOSES[purpose]
    digest = hashes.SHA256() if ecdsa else None
    signing = {"ecdsa_deterministic": True} if ecdsa else {}
    ca_key = _derived_key(seed, f"{prefix}ca", ecdsa)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_common_name)])
    ca_builder = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(_serial(seed, f"{prefix}ca"))
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    )
    # Key identifiers: Python 3.13's default TLS context (VERIFY_X509_STRICT) refuses a chain
    # without them. Only on the newer purposes, so existing certificates stay as they are.
    key_ids = purpose == "wal-spool"
    if key_ids:
        ca_builder = ca_builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
    ca = ca_builder.sign(ca_key, digest, **signing)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if purpose in ("pgbackrest", "wal-spool"):
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    names: list[x509.GeneralName] = [x509.DNSName(name), x509.DNSName(f"{name}.{domain}")]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    key = _derived_key(seed, f"{prefix}host {name}", ecdsa)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(_serial(seed, f"{prefix}host {name}"))
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if key_ids:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    cert = builder.sign(ca_key, digest, **signing)
    pem = serialization.Encoding.PEM
    return HostTls(
        ca_cert=ca.public_bytes(pem).decode(),
        cert=cert.public_bytes(pem).decode(),
        key=key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    )


def tls_seed() -> str:
    """The secret ``pgbackrest_tls_seed`` (the run stops, naming it, when it is missing)."""
    seed = load_secrets().get("pgbackrest_tls_seed")
    if seed is None:
        raise RuntimeError(
            f"host {host.name!r}: the secrets file lacks pgbackrest_tls_seed"
            " (see secrets.example.toml)"
        )
    return seed.reveal()


# --- facts ---------------------------------------------------------------------------------


class PgbackrestInfo(FactBase[dict[str, Any] | None]):
    """``pgbackrest info --output=json`` of ``stanza`` as ``user``: status code and backups.

    None when pgBackRest is not installed or the command fails; else ``{"status": code,
    "backups": n, "cipher": type}`` (code 0: ok, 1: missing stanza path, ...; type
    ``"none"`` or ``"aes-256-cbc"``, None when not reported).
    """

    # Its answer depends on another host (its repository is on pve (pgBackRest's TLS server)).
    reads_other_hosts = True

    def command(self, stanza: str, user: str) -> str:
        return (
            "command -v pgbackrest >/dev/null 2>&1 && id -u "
            f"{user} >/dev/null 2>&1 || exit 0; "
            f"runuser -u {user} -- pgbackrest --stanza={stanza} --output=json info 2>/dev/null"
            " || true"
        )

    def process(self, output: list[str]) -> dict[str, Any] | None:
        try:
            stanzas = json.loads("\n".join(output))
        except json.JSONDecodeError:
            return None
        if not isinstance(stanzas, list) or not stanzas:
            return None
        stanza = stanzas[0]
        return {
            "status": (stanza.get("status") or {}).get("code"),
            "backups": len(stanza.get("backup") or []),
            "cipher": stanza.get("cipher"),
        }


class AptPolicy(FactBase[dict[str, str | None]]):
    """``apt-cache policy PACKAGE``: its installed and candidate versions (None: none)."""

    reads_other_hosts = False

    def command(self, package: str) -> str:
        return f"LC_ALL=C apt-cache policy {package} 2>/dev/null || true"

    def process(self, output: list[str]) -> dict[str, str | None]:
        found: dict[str, str | None] = {"installed": None, "candidate": None}
        for line in output:
            field, _, value = line.strip().partition(":")
            if field.lower() in found and value.strip() not in ("", "(none)"):
                found[field.lower()] = value.strip()
        return found


class PgbackrestVersionMismatch(RuntimeError):
    """The database host and the repository host would run different pgBackRest versions."""


# --- shared pieces -------------------------------------------------------------------------


def repository_host_name(configured: str | None) -> str:
    if configured:
        names = [h.name for h in inventory]
        if configured not in names:
            raise RuntimeError(
                f"host {host.name!r}: key 'pgbackrest_repository_host' is {configured!r};"
                f" expected an inventory host ({', '.join(names)})"
            )
        return configured
    hypervisors = [h.name for h in inventory.get_group(HYPERVISOR, [])]
    if len(hypervisors) != 1:
        raise RuntimeError(
            f"host {host.name!r}: key 'pgbackrest_repository_host' is None and the inventory"
            f" has {len(hypervisors)} hypervisors ({', '.join(hypervisors) or 'none'});"
            " expected exactly one, or name the repository host"
        )
    return hypervisors[0]


def database_host_names() -> list[str]:
    return [h.name for h in inventory.get_group(AGEIS_NODE, [])]


def _tls_files(owner: str) -> None:
    """The CA certificate and this host's certificate and key, readable by ``owner`` only."""
    domain = str(MACHINE.read(host).domain)
    tls = host_tls(tls_seed(), host.name, domain)
    files.directory(
        name="pgBackRest TLS directory", path=TLS_DIR, user=owner, group=owner, mode="700"
    )
    for name, text in (("ca.crt", tls.ca_cert), ("host.crt", tls.cert)):
        files.put(
            name=f"pgBackRest TLS {name}",
            src=StringIO(text),
            dest=f"{TLS_DIR}/{name}",
            user=owner,
            group=owner,
            mode="644",
        )
    secret_file(
        name="pgBackRest TLS host.key",
        content=Secret(tls.key),
        dest=f"{TLS_DIR}/host.key",
        user=owner,
        group=owner,
        mode="600",
    )


def upstream_version(version: str) -> str:
    """The upstream part of a Debian package version: "2.59.1-1.pgdg24.04+1" -> "2.59.1"."""
    without_epoch = version.split(":", 1)[1] if ":" in version else version
    return without_epoch.rsplit("-", 1)[0]


def _peer_settings(settings: Any, peer: str) -> None:
    """Both hosts read pgbackrest_source and pgbackrest_version: they must agree."""
    theirs = DATA.read(inventory.get_host(peer))
    for key in ("pgbackrest_source", "pgbackrest_version"):
        mine, other = getattr(settings, key), getattr(theirs, key)
        if mine != other and (key == "pgbackrest_source" or settings.pgbackrest_source == "pgdg"):
            raise PgbackrestVersionMismatch(
                f"host {host.name!r}: key {key!r} is {mine!r} here and {other!r} on {peer!r};"
                " expected one value for both (pgBackRest's versions must be equal on the"
                " database host and the repository host): set it once, for both"
            )


def _codename() -> str:
    meta = host.get_fact(LinuxDistribution).get("release_meta") or {}
    distro, codename = meta.get("ID", "").lower(), meta.get("VERSION_CODENAME", "")
    if distro not in PGDG_DISTROS or not codename:
        raise RuntimeError(
            f"host {host.name!r}: key 'pgbackrest_source' is 'pgdg'; PGDG's apt repository is"
            f" set up here for {' and '.join(PGDG_DISTROS)} hosts; this one runs"
            f" {meta.get('PRETTY_NAME') or distro or 'an unknown system'}"
            " (expected pgbackrest_source 'distribution' there)"
        )
    return codename


def pin_pattern(version: str) -> str:
    """The apt pin's version regex: PGDG's builds of ``version`` (their revisions say pgdg)."""
    return f"/^{re.escape(version)}-[^-]*pgdg/"


def site(url: str) -> str:
    """The host name of an apt source URL: what an apt pin's ``Pin: origin`` matches."""
    return urlsplit(url).hostname or ""


def _install_from_pgdg(settings: Any) -> OperationMeta | None:
    """pgBackRest ``pgbackrest_version`` from PGDG (its index, or its archive for an older
    build); PGDG's other packages stay below the distribution's (priority 100 from every PGDG
    site), so PostgreSQL itself remains the distribution's."""
    codename = _codename()
    version = settings.pgbackrest_version
    archive_url = settings.pgbackrest_pgdg_archive_url
    verified_keyring(
        name="PGDG's signing key (fingerprint checked)",
        url=settings.pgbackrest_pgdg_key_url,
        url_key="pgbackrest_pgdg_key_url",
        fingerprint=settings.pgbackrest_pgdg_key_fingerprint,
        fingerprint_key="pgbackrest_pgdg_key_fingerprint",
        dest=PGDG_KEYRING,
    )
    files.template(
        name="PGDG's apt sources (apt.postgresql.org and its archive)",
        src=template_path("pgdg.sources.j2"),
        dest=PGDG_SOURCES,
        mode="644",
        user="root",
        group="root",
        repo_url=settings.pgbackrest_pgdg_url,
        archive_url=archive_url,
        codename=codename,
        keyring=PGDG_KEYRING,
    )
    sites = [site(settings.pgbackrest_pgdg_url)]
    if archive_url and site(archive_url) not in sites:
        sites.append(site(archive_url))
    files.template(
        name=f"Pin pgBackRest {version} from PGDG (PGDG's other packages below the distribution)",
        src=template_path("pgdg-pgbackrest.pref.j2"),
        dest=PGDG_PIN,
        mode="644",
        user="root",
        group="root",
        version=version,
        pattern=pin_pattern(version),
        sites=sites,
    )
    installed = (host.get_fact(DebPackages) or {}).get("pgbackrest") or []
    if any(upstream_version(v) == version and "pgdg" in v for v in installed):
        return None
    files.put(
        name="Install the pinned pgBackRest installer",
        src=file_path("pgbackrest-install"),
        dest=INSTALL_SCRIPT,
        mode="755",
    )
    apt.update(name="Refresh package lists for PGDG's repository")
    return server.shell(
        name=f"Install pgBackRest {version} from PGDG",
        commands=[
            f"{INSTALL_SCRIPT} {host.name} {version} {'archive' if archive_url else 'index-only'}"
        ],
    )


def in_run(name: str) -> Host | None:
    """Inventory host ``name`` when it is connected for this run (else None: no facts)."""
    other = inventory.get_host(name)
    return other if other in state.activated_hosts else None


def _runs_or_installs(target: Host) -> str | None:
    """The pgBackRest version ``target`` runs, or else the one apt would install there."""
    policy = target.get_fact(AptPolicy, package="pgbackrest")
    return policy["installed"] or policy["candidate"]


def _check_distribution_versions(peer: str) -> None:
    """Distribution packages on both hosts: their versions must be equal, or the run stops."""
    other = in_run(peer)
    if other is None:
        host.noop(
            f"pgBackRest versions not compared: {peer} is not in this run (the distribution's"
            " packages must give both hosts the same version)"
        )
        return
    mine, theirs = _runs_or_installs(host), _runs_or_installs(other)
    if mine is None or theirs is None:
        missing = host.name if mine is None else peer
        raise RuntimeError(
            f"host {host.name!r}: key 'pgbackrest_source' is 'distribution', but {missing}'s"
            " package lists have no pgbackrest; expected the distribution to provide it (or"
            " pgbackrest_source 'pgdg')"
        )
    if upstream_version(mine) != upstream_version(theirs):
        raise PgbackrestVersionMismatch(
            f"host {host.name!r}: key 'pgbackrest_source' is 'distribution', and the"
            f" distributions give different pgBackRest versions: {host.name} {mine},"
            f" {peer} {theirs}; pgBackRest refuses a mixed pair. Expected equal versions: set"
            " pgbackrest_source to 'pgdg' (both hosts get pgbackrest_version from"
            " apt.postgresql.org). Nothing was changed"
        )


def _install(settings: Any, peer: str) -> OperationMeta | None:
    """pgBackRest from the source the data names; the operation that installs it, if any."""
    _peer_settings(settings, peer)
    if settings.pgbackrest_source == "pgdg":
        return _install_from_pgdg(settings)
    _check_distribution_versions(peer)
    for path, what in (
        (PGDG_PIN, "pin"),
        (PGDG_SOURCES, "apt source"),
        (PGDG_KEYRING, "signing key"),
    ):
        files.file(
            name=f"No PGDG {what} (pgbackrest_source is distribution)", path=path, present=False
        )
    return apt.packages(name="Install pgBackRest (the distribution's)", packages=["pgbackrest"])


def prepare_host(owner: str, log_owner: str, settings: Any, peer: str) -> OperationMeta | None:
    """pgBackRest installed, its directories and TLS files; returns the install operation."""
    installed = _install(settings, peer)
    for path in ("/var/log/pgbackrest", "/var/lib/pgbackrest"):
        files.directory(
            name=f"pgBackRest {path}", path=path, user=log_owner, group=log_owner, mode="750"
        )
    files.directory(name="/etc/pgbackrest", path="/etc/pgbackrest", mode="755")
    files.directory(name="node-exporter textfile directory", path=TEXTFILE_DIR, mode="755")
    _tls_files(owner)
    return installed


def server_unit(user: str, mounts: list[str]) -> OperationMeta:
    """The unit of pgBackRest's TLS server, run as ``user`` and needing ``mounts``."""
    unit = files.template(
        name="pgbackrest-server.service (TLS server for the peer host)",
        src=template_path("pgbackrest-server.service.j2"),
        dest="/etc/systemd/system/pgbackrest-server.service",
        mode="644",
        user_name=user,
        mounts=mounts,
    )
    return unit


def run_server(
    confs: list[OperationMeta], unit: OperationMeta, installed: OperationMeta | None
) -> None:
    """pgBackRest's TLS server runs, restarted when its settings, unit or package changed."""
    systemd.service(
        name="pgbackrest-server runs", service="pgbackrest-server", running=True, enabled=True
    )
    systemd.service(
        name="pgbackrest-server takes its new settings",
        service="pgbackrest-server",
        restarted=True,
        _if=lambda: any(c.did_change() for c in confs) or unit.did_change() or changed(installed),
    )
