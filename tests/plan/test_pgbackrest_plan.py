"""Plans of pgBackRest: the repository on pve's HDD pool, archiving from ageis-node, over TLS."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tasks.common.pgbackrest import (
    AptPolicy,
    PgbackrestVersionMismatch,
    host_tls,
    upstream_version,
)
from tasks.hypervisor.pgbackrest_repository import cipher_drop_in
from tests.doubles.apt_policy import AptPolicyDouble, Available, compare_versions
from tests.plan.conftest import PLAN_SECRETS
from tests.plan.harness import REPO, Plan, inventory_copy
from tests.plan.machines import Machine

SEED = PLAN_SECRETS["pgbackrest_tls_seed"]
# The real pair: pve runs Proxmox VE 9 (Debian 13 trixie), ageis-node Ubuntu 24.04 (noble).
CODENAMES = {"pve": "trixie", "ageis-node": "noble"}
# The pinned release (pgbackrest_version's default) and the next one, which PGDG's index
# lists instead once it is out (PGDG's index keeps only its newest build).
VERSION = "2.59.2"
NEWER = "2.60.0"
PGDG_FINGERPRINT = "B97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF8"
PGDG_KEYRING = "/usr/share/keyrings/pgdg-archive-keyring.gpg"
PGDG_SOURCES = "/etc/apt/sources.list.d/pgdg.sources"
PGDG_PIN = "/etc/apt/preferences.d/pgdg-pgbackrest.pref"
PGDG_SITE = "apt.postgresql.org"
ARCHIVE_SITE = "apt-archive.postgresql.org"


def pgdg_build(machine: Machine, version: str, revision: int = 1) -> str:
    """PGDG's build of ``version`` for the machine's release, as PGDG numbers it: the release's
    VERSION_ID in the revision (2.59.2-1.pgdg13+1 on Debian 13, 2.59.2-1.pgdg24.04+1 on 24.04)."""
    return f"{version}-{revision}.pgdg{machine.os_release['VERSION_ID']}+1"


@pytest.fixture
def full(plan_of) -> Plan:
    return plan_of("deploys/full.py", limit=["pve", "ageis-node"])


def settings(text: str) -> dict[str, str]:
    """key=value lines of a pgbackrest.conf, sections flattened (later sections win)."""
    pairs = [line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"]
    return {key: value for key, value in pairs}


def test_repository_on_the_hdd_pool_backs_up_the_ssd_cluster_over_tls(full: Plan) -> None:
    conf = settings(full.upload("pve", "/etc/pgbackrest/pgbackrest.conf"))
    assert conf["repo1-path"] == "/mnt/hdd/pgbackrest"
    assert conf["pg1-host"] == "ageis-node"
    assert conf["pg1-host-type"] == "tls"
    # ageis-node is an Ubuntu 24.04 guest (guest.os): PostgreSQL 16 on its SSD pool.
    assert conf["pg1-path"] == "/srv/ssd/postgresql/16/main"
    assert conf["tls-server-auth"] == "ageis-node=memory"
    assert conf["repo1-retention-full"] == "2"
    assert conf["repo1-retention-diff"] == "6"
    full_timer = full.upload("pve", "/etc/systemd/system/pgbackrest-run@full.timer")
    assert "OnCalendar=Sun *-*-* 01:30:00" in full_timer
    verify_timer = full.upload("pve", "/etc/systemd/system/pgbackrest-run@verify.timer")
    assert "OnCalendar=Sun *-*-* 05:00:00" in verify_timer
    stanza = full.op("pve", "Stanza create, check and a first full backup")
    assert stanza.commands == ["/usr/local/sbin/pgbackrest-stanza-ready memory"]


def test_a_repository_with_a_backup_needs_no_stanza_step(plan_of, fleet) -> None:
    fleet["pve"].pgbackrest_info = {"status": 0, "backups": 3, "cipher": "aes-256-cbc"}
    result = plan_of("deploys/full.py", limit=["pve"])
    assert not [op for op in result.for_host("pve") if "Stanza create" in op.name]


CIPHER_CONF = "/etc/pgbackrest/conf.d/homelab-cipher.conf"


def test_the_repository_is_encrypted_with_a_passphrase_only_it_holds(full: Plan) -> None:
    drop_in = settings(full.upload("pve", CIPHER_CONF))
    assert drop_in["repo1-cipher-type"] == "aes-256-cbc"
    assert drop_in["repo1-cipher-pass"] == PLAN_SECRETS["pgbackrest_repository_cipher_pass"]
    upload = full.op("pve", "Repository encryption")
    assert "chown root:pgbackrest" in " ".join(upload.commands)
    assert "chmod 640" in " ".join(upload.commands)
    # The database host never gets the passphrase: the stanza's own keys travel encrypted.
    for path in (CIPHER_CONF, "/etc/pgbackrest/pgbackrest.conf"):
        text = "\n".join(full.commands("ageis-node"))
        assert "repo1-cipher" not in text, path


def test_an_unencrypted_repository_is_left_alone_and_stops_the_run(plan_of, fleet) -> None:
    fleet["pve"].pgbackrest_info = {"status": 0, "backups": 3, "cipher": "none"}
    with pytest.raises(BaseException) as error:
        plan_of("deploys/full.py", limit=["pve"])
    message = str(getattr(error.value, "exception", error.value))
    assert "key 'pgbackrest_repository_cipher' is 'aes-256-cbc'" in message
    assert "with cipher 'none'" in message
    assert "pgbackrest_repository_cipher = 'none'" in message
    assert "move /mnt/hdd/pgbackrest aside" in message and "Nothing was changed" in message


def test_a_changed_passphrase_of_an_existing_repository_stops_the_run(plan_of, fleet) -> None:
    fleet["pve"].pgbackrest_info = {"status": 0, "backups": 3, "cipher": "aes-256-cbc"}
    fleet["pve"].files[CIPHER_CONF] = cipher_drop_in("aes-256-cbc", "the passphrase it had")
    with pytest.raises(BaseException) as error:
        plan_of("deploys/full.py", limit=["pve"])
    message = str(getattr(error.value, "exception", error.value))
    assert "secret 'pgbackrest_repository_cipher_pass' differs" in message
    assert "the passphrase it had" not in message
    # The same passphrase: nothing to refuse, and the drop-in is not uploaded again.
    fleet["pve"].files[CIPHER_CONF] = cipher_drop_in(
        "aes-256-cbc", PLAN_SECRETS["pgbackrest_repository_cipher_pass"]
    )
    fleet["pve"].modes[CIPHER_CONF] = 640
    result = plan_of("deploys/full.py", limit=["pve"])
    assert not any(c.startswith(f"upload {CIPHER_CONF}") for c in result.commands("pve")), (
        "the drop-in is uploaded again"
    )


def test_no_encryption_when_the_data_says_none(plan_of, fleet) -> None:
    fleet["pve"].files[CIPHER_CONF] = cipher_drop_in("aes-256-cbc", "left from before")
    result = plan_of(
        "deploys/full.py", limit=["pve"], override_data={"pgbackrest_repository_cipher": "none"}
    )
    assert f"rm -f {CIPHER_CONF}" in result.commands("pve")
    assert not any(c.startswith(f"upload {CIPHER_CONF}") for c in result.commands("pve"))


def test_a_first_install_without_the_database_host_waits_for_it(plan_of) -> None:
    """On a first install the VM is created in the run: the stanza waits for the next run."""
    result = plan_of("deploys/full.py", limit=["pve", "embedder"])
    assert not [op for op in result.for_host("pve") if "Stanza create" in op.name]
    assert result.op("pve", "pgbackrest.conf (repository host)").commands


def test_database_host_archives_async_to_the_repository(full: Plan) -> None:
    conf = settings(full.upload("ageis-node", "/etc/pgbackrest/pgbackrest.conf"))
    assert conf["repo1-host"] == "pve"
    assert conf["repo1-host-type"] == "tls"
    assert conf["archive-async"] == "y"
    assert conf["spool-path"] == "/var/spool/pgbackrest"
    assert conf["tls-server-auth"] == "pve=memory"
    assert conf["pg1-path"] == "/srv/ssd/postgresql/16/main"
    pg = full.upload("ageis-node", "/etc/postgresql/16/main/conf.d/homelab.conf")
    assert "archive_mode = on" in pg
    assert "archive_command = 'pgbackrest --stanza=memory archive-push %p'" in pg
    assert "archive_timeout = 60" in pg
    mounts = full.upload(
        "ageis-node",
        "/etc/systemd/system/postgresql@16-main.service.d/homelab-mounts.conf",
    )
    assert "RequiresMountsFor=/srv/ssd/postgresql/16/main /var/spool/pgbackrest" in mounts
    timer = full.upload("ageis-node", "/etc/systemd/system/memory-store-restore-test.timer")
    assert "OnCalendar=*-*-* 03:30:00" in timer


def test_tls_files_are_derived_from_the_seed_and_stable(full: Plan) -> None:
    key = full.upload("ageis-node", "/etc/pgbackrest/tls/host.key")
    cert = full.upload("ageis-node", "/etc/pgbackrest/tls/host.crt")
    ca = full.upload("pve", "/etc/pgbackrest/tls/ca.crt")
    assert key.splitlines()[0].endswith(" PRIVATE KEY-----")  # a PEM key, derived on the controller
    assert SEED not in key + cert
    again = host_tls(SEED, "ageis-node", "home.arpa")
    assert (again.cert, again.key, again.ca_cert) == (cert, key, ca)
    parsed = x509.load_pem_x509_certificate(cert.encode())
    issuer = x509.load_pem_x509_certificate(ca.encode())
    parsed.verify_directly_issued_by(issuer)
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["ageis-node", "ageis-node.home.arpa"]
    other = host_tls("another-seed", "ageis-node", "home.arpa")
    assert other.key != key and other.ca_cert != ca
    key_op = [
        op for op in full.for_host("ageis-node") if op.name.endswith("pgBackRest TLS host.key")
    ]
    assert len(key_op) == 1


# --- where pgBackRest comes from ----------------------------------------------------------


def expected_sources(codename: str, archive: bool = True) -> str:
    text = (
        "# Managed by homelab-as-code (templates/pgdg.sources.j2): local changes are"
        " overwritten.\n"
        "# The PostgreSQL Global Development Group's repository, signed by the key the\n"
        "# pgbackrest_pgdg_key_fingerprint data key names. Its pin"
        " (/etc/apt/preferences.d/pgdg-pgbackrest.pref)\n"
        "# takes pgBackRest from it and nothing else.\n"
        "Types: deb\n"
        "URIs: https://apt.postgresql.org/pub/repos/apt\n"
        f"Suites: {codename}-pgdg\n"
        "Components: main\n"
        f"Signed-By: {PGDG_KEYRING}\n"
    )
    if archive:
        text += (
            "\n"
            "# PGDG's archive: every build PGDG ever published for this release (its index"
            " above keeps only\n"
            "# the newest), signed by the same key, so the pinned pgbackrest_version installs"
            " even once PGDG\n"
            "# has moved on.\n"
            "Types: deb\n"
            "URIs: https://apt-archive.postgresql.org/pub/repos/apt\n"
            f"Suites: {codename}-pgdg-archive\n"
            "Components: main\n"
            f"Signed-By: {PGDG_KEYRING}\n"
        )
    return text


def stanzas(text: str) -> list[dict[str, str]]:
    """A deb822 file's (or the pin file's) stanzas as field -> value (comments dropped)."""
    found = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith("#")]
        found.append(dict(line.split(": ", 1) for line in lines))
    return found


pin_stanzas = stanzas


def pin_regex(pin_text: str) -> str:
    """The version regex of the pin file's pgbackrest record (between its slashes)."""
    record = next(r for r in pin_stanzas(pin_text) if r["Package"] == "pgbackrest")
    kind, _, value = record["Pin"].partition(" ")
    assert kind == "version" and value[0] == value[-1] == "/", record
    return value[1:-1]


@pytest.mark.parametrize("name", CODENAMES)
def test_both_hosts_get_pgdg_sources_key_and_pin(full: Plan, name: str) -> None:
    assert full.upload(name, PGDG_SOURCES) == expected_sources(CODENAMES[name])
    assert full.op(name, "PGDG's signing key").commands == [
        f"/usr/local/sbin/install-apt-key {name} pgbackrest_pgdg_key_url"
        " https://www.postgresql.org/media/keys/ACCC4CF8.asc"
        f" pgbackrest_pgdg_key_fingerprint {PGDG_FINGERPRINT} {PGDG_KEYRING}"
    ]
    assert pin_stanzas(full.upload(name, PGDG_PIN)) == [
        # Exactly PGDG's builds of 2.59.2 (their revisions say pgdg): installed and held.
        {"Package": "pgbackrest", "Pin": r"version /^2\.59\.2-[^-]*pgdg/", "Pin-Priority": "1001"},
        # PGDG's other packages (its PostgreSQL, libpq), from its index and from its archive,
        # rank below the distribution's.
        {"Package": "*", "Pin": f"origin {PGDG_SITE}", "Pin-Priority": "100"},
        {"Package": "*", "Pin": f"origin {ARCHIVE_SITE}", "Pin-Priority": "100"},
    ]


@pytest.mark.parametrize("name", CODENAMES)
def test_every_pgdg_source_is_signed_by_the_checked_key_and_ranked_low(
    full: Plan, name: str
) -> None:
    """A PGDG source without its origin pin would offer PGDG's newer PostgreSQL and libpq at
    apt's default priority, above the distribution's: the pin must name every source's site."""
    sources = stanzas(full.upload(name, PGDG_SOURCES))
    assert [s["Suites"] for s in sources] == [
        f"{CODENAMES[name]}-pgdg",
        f"{CODENAMES[name]}-pgdg-archive",
    ]
    assert {s["Signed-By"] for s in sources} == {PGDG_KEYRING}
    sites = {s["URIs"].split("/")[2] for s in sources}
    low = {
        r["Pin"].split(" ", 1)[1]
        for r in pin_stanzas(full.upload(name, PGDG_PIN))
        if r["Package"] == "*" and r["Pin-Priority"] == "100"
    }
    assert sites == low == {PGDG_SITE, ARCHIVE_SITE}


def test_both_hosts_install_the_identical_pinned_version(full: Plan) -> None:
    for name in CODENAMES:
        ops = [op.name for op in full.for_host(name)]
        key, source, pin = (
            ops.index(next(o for o in ops if mark in o))
            for mark in ("PGDG's signing key", "PGDG's apt sources", f"Pin pgBackRest {VERSION}")
        )
        refresh = ops.index(next(o for o in ops if "Refresh package lists for PGDG" in o))
        install = full.op(name, f"Install pgBackRest {VERSION} from PGDG")
        assert install.commands == [f"/usr/local/sbin/pgbackrest-install {name} {VERSION} archive"]
        assert key < source < pin < refresh < ops.index(install.name)
        assert full.op(name, "Refresh package lists for PGDG").commands == ["apt-get update"]
        # The distribution's package is not what gets installed.
        assert not [op for op in full.for_host(name) if "(the distribution's)" in op.name]
    # One pin for both: the same regex selects each host's own build of the same release.
    regexes = {pin_regex(full.upload(name, PGDG_PIN)) for name in CODENAMES}
    assert len(regexes) == 1


def test_the_pin_matches_each_hosts_pgdg_builds_only(full: Plan, fleet) -> None:
    import re

    for name in CODENAMES:
        pattern = pin_regex(full.upload(name, PGDG_PIN))
        machine = fleet[name]
        for build in (pgdg_build(machine, VERSION), pgdg_build(machine, VERSION, revision=2)):
            assert re.search(pattern, build), (name, build)
        others = (
            pgdg_build(machine, NEWER),
            pgdg_build(machine, "2.59.1"),
            pgdg_build(machine, "2.59.20"),
            f"{VERSION}-1",  # Debian's own build of the same release
            machine.apt_candidates["pgbackrest"],  # the distribution's (2.55.1-1, 2.50-1build2)
        )
        for other in others:
            assert not re.search(pattern, other), (name, other)
        assert upstream_version(pgdg_build(machine, VERSION)) == VERSION
    assert upstream_version("2.50-1build2") == "2.50"


# --- which build apt takes: the plan's sources and pin under apt's rules (a test double) ---

# The distribution's PostgreSQL client library on each release, and PGDG's newer ones.
DISTRIBUTION_LIBPQ = {"pve": "17.6-0+deb13u1", "ageis-node": "16.10-0ubuntu0.24.04.1"}


def lists(machine: Machine, name: str, sources_text: str) -> list[Available]:
    """What each source lists for the host, once PGDG has released NEWER: the distribution's
    own packages; PGDG's index only its newest builds; PGDG's archive every build."""
    distribution_site = "distribution-mirror.invalid"
    codename = CODENAMES[name]
    pgdg = {
        f"{codename}-pgdg": [NEWER],
        f"{codename}-pgdg-archive": ["2.59.0", "2.59.1", VERSION, NEWER],
    }
    available = [
        Available("pgbackrest", machine.apt_candidates["pgbackrest"], distribution_site),
        Available("libpq5", DISTRIBUTION_LIBPQ[name], distribution_site),
    ]
    for source in stanzas(sources_text):
        site = source["URIs"].split("/")[2]
        for version in pgdg[source["Suites"]]:
            available.append(Available("pgbackrest", pgdg_build(machine, version), site))
        available.append(Available("libpq5", pgdg_build(machine, "18.1"), site))
    return available


@pytest.mark.parametrize("name", CODENAMES)
def test_a_fresh_host_gets_the_pinned_build_after_pgdg_moved_on(
    full: Plan, fleet, name: str
) -> None:
    """The lost-SSD case: a host rebuilt once PGDG's index lists only NEWER still installs
    VERSION (from the archive), and PGDG's libpq stays below the distribution's."""
    machine = fleet[name]
    sources, pin = full.upload(name, PGDG_SOURCES), full.upload(name, PGDG_PIN)
    apt = AptPolicyDouble(pin_stanzas(pin), lists(machine, name, sources))
    chosen = apt.candidate("pgbackrest")
    assert chosen is not None and chosen.version == pgdg_build(machine, VERSION)
    assert chosen.site == ARCHIVE_SITE
    libpq = apt.candidate("libpq5")
    assert libpq is not None and libpq.version == DISTRIBUTION_LIBPQ[name]
    # Without the archive's origin record, the archive's libpq (18.1, priority 500) would win:
    # the record is what keeps PGDG from upgrading the distribution's PostgreSQL libraries.
    unranked = [r for r in pin_stanzas(pin) if r.get("Pin") != f"origin {ARCHIVE_SITE}"]
    bare = AptPolicyDouble(unranked, lists(machine, name, sources)).candidate("libpq5")
    assert bare is not None and bare.site == ARCHIVE_SITE


@pytest.mark.parametrize("name", CODENAMES)
def test_without_the_archive_the_pin_finds_nothing_once_pgdg_moved_on(
    plan_of, fleet, name: str
) -> None:
    result = plan_of(
        "deploys/full.py",
        limit=["pve", "ageis-node"],
        override_data={"pgbackrest_pgdg_archive_url": None},
    )
    sources, pin = result.upload(name, PGDG_SOURCES), result.upload(name, PGDG_PIN)
    assert sources == expected_sources(CODENAMES[name], archive=False)
    assert [r["Pin"] for r in pin_stanzas(pin)][1:] == [f"origin {PGDG_SITE}"]
    assert result.op(name, f"Install pgBackRest {VERSION} from PGDG").commands == [
        f"/usr/local/sbin/pgbackrest-install {name} {VERSION} index-only"
    ]
    # apt would offer the distribution's build: the install script refuses it (below).
    chosen = AptPolicyDouble(pin_stanzas(pin), lists(fleet[name], name, sources)).candidate(
        "pgbackrest"
    )
    assert chosen is not None and chosen.version == fleet[name].apt_candidates["pgbackrest"]


def test_the_apt_double_orders_versions_as_dpkg() -> None:
    ordered = [
        "2.50-1build2",
        "2.55.1-1",
        "2.59.2-1",
        "2.59.2-1.pgdg13+1",
        "2.59.2-1.pgdg24.04+1",
        "2.59.2-2.pgdg13+1",
        "2.59.10-1.pgdg13+1",
        "2.60.0~rc1-1",
        "2.60.0-1.pgdg13+1",
        "1:2.0-1",
    ]
    for lower, higher in itertools.pairwise(ordered):
        assert compare_versions(lower, higher) < 0 < compare_versions(higher, lower), lower
    assert compare_versions("16.10-0ubuntu0.24.04.1", "18.1-1.pgdg24.04+1") < 0
    assert compare_versions("2.59.2-1.pgdg13+1", "2.59.2-1.pgdg13+1") == 0


# --- the install script, run here against stand-ins for apt-cache and apt-get -------------


def run_install_script(
    tmp_path: Path, candidate: str, archive: str, version: str = VERSION
) -> tuple[int, str, str]:
    """files/pgbackrest-install with test doubles of apt-cache (answers ``candidate``) and
    apt-get (records its arguments); returns exit status, stderr and apt-get's arguments."""
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "apt-get.args"
    (bin_dir / "apt-cache").write_text(
        "#!/bin/sh\n# Test double of apt-cache policy.\n"
        f"printf 'pgbackrest:\\n  Installed: (none)\\n  Candidate: {candidate}\\n'\n"
    )
    (bin_dir / "apt-get").write_text(
        f'#!/bin/sh\n# Test double of apt-get: records its arguments.\necho "$@" > {record}\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    done = subprocess.run(
        ["sh", str(REPO / "files/pgbackrest-install"), "ageis-node", version, archive],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, done.stderr, record.read_text() if record.exists() else ""


def test_the_install_script_installs_the_pinned_pgdg_build(tmp_path: Path) -> None:
    status, err, args = run_install_script(tmp_path, "2.59.2-1.pgdg24.04+1", "archive")
    assert status == 0, err
    assert "pgbackrest=2.59.2-1.pgdg24.04+1" in args.split()
    assert "--allow-downgrades" in args.split()


@pytest.mark.parametrize("candidate", ["2.50-1build2", "2.60.0-1.pgdg24.04+1", ""])
def test_the_install_script_refuses_what_pgdg_does_not_list(tmp_path: Path, candidate: str) -> None:
    status, err, args = run_install_script(tmp_path, candidate, "archive")
    assert status == 1 and args == ""
    assert "host 'ageis-node': key 'pgbackrest_version' is '2.59.2'" in err
    assert f"apt would install pgbackrest '{candidate or '(none)'}'" in err
    assert "-pgdg-archive" in err and "set pgbackrest_version (one value, for both hosts)" in err
    assert "Nothing was installed" in err


def test_the_install_script_without_the_archive_says_what_to_change(tmp_path: Path) -> None:
    status, err, args = run_install_script(tmp_path, "2.60.0-1.pgdg24.04+1", "index-only")
    assert status == 1 and args == ""
    assert "pgbackrest_pgdg_archive_url is None" in err
    assert "https://apt-archive.postgresql.org/pub/repos/apt" in err
    assert "'apt-cache policy pgbackrest'" in err and "Nothing was installed" in err


def test_apt_policy_fact_reads_installed_and_candidate() -> None:
    output = [
        "pgbackrest:",
        "  Installed: (none)",
        "  Candidate: 2.50-1build2",
        "  Version table:",
        "     2.50-1build2 500",
    ]
    assert AptPolicy().process(output) == {"installed": None, "candidate": "2.50-1build2"}
    assert AptPolicy().process([]) == {"installed": None, "candidate": None}


def converge_apt(machine: Machine, first: Plan, name: str) -> None:
    """The machine after the first rollout's PGDG part: key, sources, pin, package."""
    machine.keyrings[PGDG_KEYRING] = [PGDG_FINGERPRINT]
    # apt's own directories (every real host has them; the simulated ones list few).
    machine.directories |= {"/etc/apt/sources.list.d", "/etc/apt/preferences.d"}
    machine.files[PGDG_SOURCES] = first.upload(name, PGDG_SOURCES)
    machine.files[PGDG_PIN] = first.upload(name, PGDG_PIN)
    machine.files["/usr/local/sbin/install-apt-key"] = (REPO / "files/install-apt-key").read_text()
    machine.modes["/usr/local/sbin/install-apt-key"] = 755
    machine.packages["pgbackrest"] = pgdg_build(machine, VERSION)


PGDG_OPS = ("PGDG", f"pgBackRest {VERSION}", "install-apt-key", "Install pgBackRest")


def test_a_converged_pair_plans_zero_changes_to_the_package(full: Plan, plan_of, fleet) -> None:
    for name in CODENAMES:
        converge_apt(fleet[name], full, name)
    again = plan_of("deploys/full.py", limit=["pve", "ageis-node"])
    for name in CODENAMES:
        ours = [op for op in again.for_host(name) if any(m in op.name for m in PGDG_OPS)]
        assert len(ours) >= 3, name  # key, sources and pin are still managed
        assert [op.name for op in ours if op.commands] == [], name
        assert not [op for op in ours if "Refresh package lists for PGDG" in op.name]
        assert not [op for op in ours if op.name.startswith("Install pgBackRest")]
        # Not a restart for a package that did not change.
        restart = again.op(name, "pgbackrest-server takes its new settings")
        assert restart.conditional


def test_a_version_change_in_the_data_reinstalls_on_both(full: Plan, plan_of, fleet) -> None:
    for name in CODENAMES:
        converge_apt(fleet[name], full, name)
    again = plan_of(
        "deploys/full.py", limit=["pve", "ageis-node"], override_data={"pgbackrest_version": NEWER}
    )
    for name in CODENAMES:
        assert again.op(name, f"Install pgBackRest {NEWER} from PGDG").commands == [
            f"/usr/local/sbin/pgbackrest-install {name} {NEWER} archive"
        ]
        assert r"Pin: version /^2\.60\.0-[^-]*pgdg/" in again.upload(name, PGDG_PIN)


# --- the distribution's packages ----------------------------------------------------------


def refusal(plan_of: Any, **kwargs: Any) -> BaseException:
    with pytest.raises(Exception) as caught:
        plan_of("deploys/full.py", **kwargs)
    return getattr(caught.value, "exception", caught.value)


DISTRIBUTION = {"pgbackrest_source": "distribution"}


def test_distribution_packages_of_different_versions_stop_the_run(plan_of) -> None:
    # Both hosts in the run: the facts of both are compared at plan time, before any change.
    error = refusal(plan_of, limit=["pve", "ageis-node"], override_data=DISTRIBUTION)
    assert isinstance(error, PgbackrestVersionMismatch), repr(error)
    message = str(error)
    assert "key 'pgbackrest_source' is 'distribution'" in message
    assert "pve 2.55.1-1" in message and "ageis-node 2.50-1build2" in message
    assert "pgbackrest_source to 'pgdg'" in message and "Nothing was changed" in message


def test_distribution_packages_of_equal_versions_install_and_leave_pgdg_out(plan_of, fleet) -> None:
    # A Debian 13 database host, as in the lab: the same 2.55.1 on both.
    fleet["ageis-node"].apt_candidates["pgbackrest"] = "2.55.1-1"
    result = plan_of("deploys/full.py", limit=["pve", "ageis-node"], override_data=DISTRIBUTION)
    for name in CODENAMES:
        install = result.op(name, "Install pgBackRest (the distribution's)").commands
        assert len(install) == 1 and install[0].endswith("install pgbackrest"), install
        assert not [op for op in result.for_host(name) if "PGDG's" in op.name]
        for what in ("pin", "apt source", "signing key"):
            assert result.op(name, f"No PGDG {what}").commands == []


def test_distribution_packages_with_the_peer_outside_the_run_are_not_compared(plan_of) -> None:
    result = plan_of("deploys/full.py", limit=["pve"], override_data=DISTRIBUTION)
    assert result.op("pve", "Install pgBackRest (the distribution's)").commands


def with_host_data(tmp_path: Path, name: str, **overrides: object) -> str:
    """A copy of the real inventory with ``overrides`` on host ``name`` only; its path."""
    change = (
        "for _group in (hypervisor, ageis_node):\n"
        "    for _name, _data in _group:\n"
        f"        if _name == {name!r}:\n"
        f"            _data.update({overrides!r})\n\n"
    )
    return inventory_copy(tmp_path, change)


@pytest.mark.parametrize(
    "key, value", [("pgbackrest_version", "2.59.1"), ("pgbackrest_source", "distribution")]
)
def test_hosts_whose_data_disagree_stop_the_run(plan_of, tmp_path, key, value) -> None:
    inventory_file = with_host_data(tmp_path, "ageis-node", **{key: value})
    error = refusal(plan_of, limit=["pve"], inventory_file=inventory_file)
    assert isinstance(error, PgbackrestVersionMismatch), repr(error)
    default = {"pgbackrest_version": VERSION, "pgbackrest_source": "pgdg"}[key]
    assert f"key {key!r} is {default!r} here and {value!r} on 'ageis-node'" in str(error)
