"""Plans of the Tailscale task on the real machines' facts (no network, no hosts)."""

from __future__ import annotations

import pytest

from tests.plan.conftest import PLAN_SECRETS
from tests.plan.harness import Plan

# The nodes and the release each runs (Proxmox VE 9 is Debian 13; the VM is Ubuntu 24.04).
NODES = {
    "pve": ("debian", "trixie"),
    "ageis-node": ("ubuntu", "noble"),
    "embedder": ("debian", "trixie"),
}
GUESTS = ("monitoring", "dns")
FINGERPRINT = "2596A99EAAB33821893C0A79458CA832957F5868"
KEYRING = "/usr/share/keyrings/tailscale-archive-keyring.gpg"
SECRET = PLAN_SECRETS["tailscale_auth_key"]
DEFAULT_PREFS = {"Hostname": "embedder", "RunSSH": False, "CorpDNS": False, "RouteAll": False}


def up(name: str, *extra: str) -> str:
    return (
        f"/usr/local/sbin/tailscale-login {name} tailscale up --reset"
        f" --auth-key=file:/etc/tailscale/authkey --hostname={name}"
        + "".join(f" {flag}" for flag in extra or _defaults())
        + " --timeout=120s"
    )


def _defaults() -> tuple[str, ...]:
    return ("--accept-dns=false", "--accept-routes=false", "--ssh=false")


def shell_commands(result: Plan, name: str) -> list[str]:
    """The commands the host would run, without file uploads (whose text is their content)."""
    return [c for c in result.commands(name) if not c.startswith("upload ")]


def logged_in(machine, prefs: dict | None = None) -> None:
    """Make a simulated machine a converged Tailscale node."""
    machine.packages["tailscale"] = "1.90.6"
    machine.keyrings[KEYRING] = [FINGERPRINT]
    machine.running["tailscaled"] = True
    machine.enabled["tailscaled"] = True
    machine.tailscale = {"backend_state": "Running", "prefs": dict(prefs or DEFAULT_PREFS)}


@pytest.mark.parametrize("name", NODES)
def test_source_is_deb822_for_the_release_signed_by_the_keyring(full: Plan, name: str) -> None:
    distro, codename = NODES[name]
    upload = next(c for c in full.op(name, "Tailscale's apt source").commands if "upload" in c)
    assert upload == (
        "upload /etc/apt/sources.list.d/tailscale.sources\n"
        "# Managed by homelab-as-code (templates/tailscale.sources.j2): local changes are"
        " overwritten.\n"
        "# Tailscale's stable track, signed by the key the tailscale_key_fingerprint data key"
        " names.\n"
        "Types: deb\n"
        f"URIs: https://pkgs.tailscale.com/stable/{distro}\n"
        f"Suites: {codename}\n"
        "Components: main\n"
        f"Signed-By: {KEYRING}\n"
    )


@pytest.mark.parametrize("name", NODES)
def test_key_is_downloaded_and_checked_against_the_fingerprint(full: Plan, name: str) -> None:
    distro, codename = NODES[name]
    assert full.op(name, "Tailscale's signing key").commands == [
        f"/usr/local/sbin/install-apt-key {name} tailscale_key_url"
        f" https://pkgs.tailscale.com/stable/{distro}/{codename}.noarmor.gpg"
        f" tailscale_key_fingerprint {FINGERPRINT} {KEYRING}"
    ]


def test_lists_refresh_then_tailscale_installs_and_tailscaled_runs(full: Plan) -> None:
    refresh = full.op("embedder", "Refresh package lists for Tailscale")
    assert refresh.conditional and refresh.commands == ["apt-get update"]
    install = full.op("embedder", "Install tailscale").commands
    assert len(install) == 1 and install[0].endswith("install --no-install-recommends tailscale")
    assert full.op("embedder", "tailscaled runs").commands == [
        "systemctl start tailscaled.service",
        "systemctl enable tailscaled.service",
    ]
    assert full.op("embedder", "No Tailscale version pin").commands == []


def test_auth_key_is_a_root_only_file_never_a_command_line_value(full: Plan) -> None:
    assert "chmod 700 /etc/tailscale" in full.op("embedder", "auth key directory").commands
    commands = full.op("embedder", "Tailscale auth key (root-only file").commands
    assert f"upload /etc/tailscale/authkey\n{SECRET}" in commands
    assert "chmod 600 /etc/tailscale/authkey" in commands
    assert "chown root:root /etc/tailscale/authkey" in commands
    # (Plan secrets share one value: the vector indexer's and the document ingester's database
    # password files, the WAL receiver's pgpass and NUT's upsmon.conf, root:nut 640, hold it
    # too.)
    others = (
        "upload /etc/tailscale/authkey",
        "upload /etc/vector-indexer/db-password",
        "upload /etc/document-ingest/db-password",
        "upload /etc/homelab/wal-receiver/pgpass",
        "upload /etc/nut/upsmon.conf",
        "upload /etc/homelab/wal-receiver/pgpass",
    )
    for command in full.commands("embedder"):
        if not command.startswith(others):
            assert SECRET not in command, command


def test_the_auth_key_is_on_the_host_for_the_login_only(full: Plan) -> None:
    names = [op.name for op in full.for_host("embedder")]
    upload = next(i for i, n in enumerate(names) if "Tailscale auth key (root-only file" in n)
    login = next(i for i, n in enumerate(names) if "Log in to the tailnet" in n)
    removal = next(i for i, n in enumerate(names) if "No Tailscale auth key left" in n)
    assert upload < login < removal
    # Not there yet in the simulated fresh host: nothing to remove before the run creates it.
    assert full.for_host("embedder")[removal].commands == []


def test_a_logged_in_node_gets_no_key_and_loses_one_left_behind(plan_of, fleet) -> None:
    logged_in(fleet["embedder"])
    # The test double's key, as an earlier login left it on the host.
    fleet["embedder"].files["/etc/tailscale/authkey"] = SECRET
    result = plan_of("deploys/full.py")
    assert not [op for op in result.for_host("embedder") if "auth key (root-only" in op.name]
    assert result.op("embedder", "No Tailscale auth key left").commands == [
        "rm -f /etc/tailscale/authkey"
    ]


@pytest.mark.parametrize("name", NODES)
def test_up_reads_the_key_from_its_file_with_the_default_flags(full: Plan, name: str) -> None:
    login = full.op(name, "Log in to the tailnet")
    assert login.commands == [up(name)]
    assert "--accept-dns=false" in login.commands[0]  # the LAN's resolver stays in charge


def test_data_flags_reach_tailscale_up(plan_of) -> None:
    result = plan_of(
        "deploys/full.py",
        override_data={
            "tailscale_tags": ["tag:homelab", "tag:gpu"],
            "tailscale_ssh": True,
            "tailscale_accept_dns": True,
            "tailscale_accept_routes": True,
        },
    )
    assert result.op("ageis-node", "Log in to the tailnet").commands == [
        up(
            "ageis-node",
            "--accept-dns=true",
            "--accept-routes=true",
            "--ssh=true",
            "--advertise-tags=tag:homelab,tag:gpu",
        )
    ]


def test_hostname_from_the_data(plan_of) -> None:
    result = plan_of("deploys/full.py", override_data={"tailscale_hostname": "homelab-node"})
    command = result.op("pve", "Log in to the tailnet").commands[0]
    assert " --hostname=homelab-node " in command


def test_unstable_track_and_version_pin(plan_of) -> None:
    result = plan_of(
        "deploys/full.py",
        override_data={"tailscale_track": "unstable", "tailscale_version": "1.91.2"},
    )
    source = next(c for c in result.op("pve", "Tailscale's apt source").commands if "upload" in c)
    assert "URIs: https://pkgs.tailscale.com/unstable/debian\n" in source
    assert (
        "https://pkgs.tailscale.com/unstable/debian/trixie.noarmor.gpg"
        in (result.op("pve", "Tailscale's signing key").commands[0])
    )
    pin = next(c for c in result.op("pve", "Pin Tailscale 1.91.2").commands if "upload" in c)
    assert "Package: tailscale\nPin: version 1.91.2\nPin-Priority: 1001\n" in pin
    install = result.op("pve", "Install tailscale").commands[0]
    assert "--allow-downgrades" in install and install.endswith("tailscale=1.91.2")


def test_logged_in_node_plans_no_login_and_no_key_download(plan_of, fleet) -> None:
    logged_in(fleet["embedder"])
    result = plan_of("deploys/full.py")
    for op_name in ("Tailscale's signing key", "Install tailscale", "tailscaled runs"):
        assert result.op("embedder", op_name).commands == [], op_name
    assert not any("tailscale up" in c for c in shell_commands(result, "embedder"))
    assert not any(c.startswith("tailscale set") for c in shell_commands(result, "embedder"))
    # The other nodes are not logged in yet: they still get it.
    assert result.op("pve", "Log in to the tailnet").commands == [up("pve")]


def test_logged_in_node_with_other_settings_gets_tailscale_set(plan_of, fleet) -> None:
    logged_in(fleet["embedder"], {**DEFAULT_PREFS, "RunSSH": True, "CorpDNS": True})
    result = plan_of("deploys/full.py")
    assert result.op("embedder", "tailscale set").commands == [
        "tailscale set --hostname=embedder --accept-dns=false --accept-routes=false --ssh=false"
    ]
    assert not any("tailscale up" in c for c in shell_commands(result, "embedder"))


@pytest.mark.parametrize("state", ["NeedsLogin", "Stopped", "Unavailable"])
def test_node_not_up_gets_the_login(plan_of, fleet, state: str) -> None:
    logged_in(fleet["embedder"])
    fleet["embedder"].tailscale = {"backend_state": state, "prefs": DEFAULT_PREFS}
    result = plan_of("deploys/full.py")
    assert result.op("embedder", "Log in to the tailnet").commands == [up("embedder")]


def test_a_wrong_keyring_is_replaced(plan_of, fleet) -> None:
    logged_in(fleet["embedder"])
    fleet["embedder"].keyrings[KEYRING] = [FINGERPRINT, "0" * 40]  # an extra key slipped in
    result = plan_of("deploys/full.py")
    assert (
        result.op("embedder", "Tailscale's signing key")
        .commands[0]
        .startswith("/usr/local/sbin/install-apt-key embedder ")
    )


@pytest.mark.parametrize("name", GUESTS)
def test_service_guests_get_no_tailscale(full: Plan, name: str) -> None:
    marks = (
        "tailscale-archive-keyring",
        "sources.list.d/tailscale",
        "/etc/tailscale",
        "tailscale-login",
        "tailscaled.service",
        "install --no-install-recommends tailscale",
    )
    for command in full.commands(name):
        assert not any(mark in command for mark in marks), command
    # The nodes do get it (so the marks above are the right ones to look for).
    assert any("tailscale-login" in command for command in full.commands("embedder"))


def test_changed_tags_are_reported_not_forced(plan_of, fleet, caplog) -> None:
    logged_in(fleet["embedder"], {**DEFAULT_PREFS, "AdvertiseTags": ["tag:old"]})
    result = plan_of("deploys/full.py", override_data={"tailscale_tags": ["tag:homelab"]})
    assert not any("tailscale up" in c for c in shell_commands(result, "embedder"))
    assert "embedder: tailscale_tags is ['tag:homelab'], the node advertises ['tag:old']" in (
        caplog.text
    )
