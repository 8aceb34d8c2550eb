"""The UPS: Network UPS Tools (NUT) shuts the machines down cleanly before the battery is empty.

Where a host's data declares ``ups`` (the UPS's USB or serial cable is plugged into it: the
hypervisor), NUT drives the UPS there (``nut-server``: the driver and ``upsd`` on 127.0.0.1,
and on the LAN address when another machine runs on the same UPS) and ``upsmon`` watches it as
the primary. A machine that runs on that UPS without its cable (the embedder) declares
``ups_primary`` (the host with the cable) and runs ``upsmon`` as a secondary over the LAN; port
3493 is open to exactly those machines.

On battery nothing happens but an alert. When the UPS reports a low battery (its own low mark,
or ``ups.runtime_low_seconds`` of runtime left when the data sets it), the primary's
``upsmon`` raises forced shutdown: the secondaries shut down first, the primary waits for them
(``HOSTSYNC``), then runs ``homelab-ups-shutdown``: Proxmox's ``stopall`` stops the guests in
the reverse of their start order (each guest's ``startup`` order), and the host powers off.
NUT's shutdown hook then tells the UPS to cut its outlets, so that the machines start again
when the mains come back (set the BIOS to power on after AC loss) and boot in their order.

Logins: ``upsd.users`` holds one ``primary`` and one ``secondary`` user, each with its own
password (secrets ``ups_primary_password`` and ``ups_secondary_password``); a secondary can
read the UPS but cannot raise forced shutdown. The files that hold them are root:nut 640.
Metrics: ``files/homelab-ups-metrics`` reads ``upsc`` for the textfile collector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

from tasks.common.datamodel.forms import HOSTNAME, Field, Int, Optional, Str, Struct
from tasks.common.datamodel.keys import DataError, Key, Schema
from tasks.common.datamodel.machine import MACHINE, ROLE_GROUPS
from tasks.common.datamodel.secrets import Secret, SecretSpec, load_secrets
from tasks.common.ports import Port
from tasks.common.secret_files import secret_file
from tasks.common.templating import file_path, template_path

UPS_NAME = "ups"
NUT_PORT = 3493
SHUTDOWN_SCRIPT = "/usr/local/sbin/homelab-ups-shutdown"

UPS = Struct(
    {
        "driver": Field(
            Str(r"[a-z0-9_-]{2,40}", what='a NUT driver name such as "usbhid-ups"'),
            doc="NUT driver (``usbhid-ups`` for most USB UPSes; ``dummy-ups`` simulates one)",
        ),
        "port": Field(
            Str(r"[A-Za-z0-9_./:-]{1,200}", what='"auto" or a device path such as /dev/ttyS0'),
            "auto",
            doc="the driver's port (``auto`` for USB)",
        ),
        "description": Field(
            Str(r"[A-Za-z0-9 ,.()_/-]{0,80}", what="letters, digits and simple punctuation"),
            "",
            doc="what the UPS is (shown by upsc)",
        ),
        "runtime_low_seconds": Field(
            Optional(Int(60, 7200)),
            None,
            doc="shut down at this runtime left, instead of at the UPS's own low-battery mark",
        ),
    },
    what="a UPS: driver, port, description, runtime_low_seconds",
)

DATA = Schema(
    "ups",
    Key(
        "ups",
        Optional(UPS),
        None,
        "The UPS whose cable is plugged into this host: NUT drives it here and this host shuts"
        " down last. None: no UPS on this host.",
    ),
    Key(
        "ups_primary",
        Optional(HOSTNAME),
        None,
        "For a machine powered by a UPS plugged into another host: that inventory host. It"
        " follows the UPS as a NUT secondary and shuts down first.",
    ),
    Key(
        "ups_hostsync_seconds",
        Int(5, 300),
        15,
        "How long the primary waits for the secondaries to shut down before it does.",
    ),
)

SECRETS = (
    SecretSpec(
        "ups_primary_password",
        ROLE_GROUPS,
        "NUT's primary upsmon login on the UPS host (any long random string)",
        needed=lambda data: bool(data.get("ups")),
    ),
    SecretSpec(
        "ups_secondary_password",
        ROLE_GROUPS,
        "NUT's secondary upsmon login, for the machines on another host's UPS (any long random"
        " string)",
        needed=lambda data: bool(data.get("ups")) or bool(data.get("ups_primary")),
    ),
)


def secondaries_of(name: str, peers: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, LAN address) of every host in ``peers`` (name -> data) whose ``ups_primary`` is
    ``name``."""
    return sorted(
        (other, str(data.get("lan_address")))
        for other, data in peers.items()
        if data.get("ups_primary") == name
    )


def _secondary_sources(data: Any, peers: Mapping[str, Any]) -> list[str]:
    """The machines on this host's UPS (their ``ups_primary`` is the host with this data)."""
    if not data.get("ups"):
        return []
    names = [n for n, d in peers.items() if d.get("lan_address") == data.get("lan_address")]
    return [f"{a}/32" for name in names for _, a in secondaries_of(name, peers)]


PORTS = (Port(NUT_PORT, "tcp", "nut", peer_sources=_secondary_sources),)


def nut_quoted(value: str) -> str:
    """A value in NUT's configuration syntax: double quotes, backslash and quote escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _passwords(*names: str) -> dict[str, str]:
    """The named secrets, read from the secrets file once."""
    secrets = load_secrets()
    missing = [name for name in names if name not in secrets]
    if missing:
        raise RuntimeError(
            f"host {host.name!r}: the secrets file lacks {', '.join(missing)}"
            " (see secrets.example.toml)"
        )
    return {name: secrets[name].reveal() for name in names}


@deploy("UPS (NUT)", data_defaults=DATA.defaults())
def ups() -> None:
    settings = DATA.read(host)
    if settings.ups is not None and settings.ups_primary is not None:
        raise DataError(
            host.name, "ups_primary", settings.ups_primary,
            "None on a host with its own ups (one host drives a UPS, the others follow it)",
        )  # fmt: skip
    if settings.ups is not None:
        _primary(settings)
    elif settings.ups_primary is not None:
        _secondary(settings)


def _packages(names: list[str]) -> None:
    apt.packages(name=f"Install {', '.join(names)}", packages=names, no_recommends=True)


def _common_files(mode: str, monitor: str, shutdown: str, hostsync: int) -> list[Any]:
    nut_conf = files.template(
        name=f"NUT mode: {mode}",
        src=template_path("nut.conf.j2"),
        dest="/etc/nut/nut.conf",
        mode="640",
        group="nut",
        nut_mode=mode,
    )
    upsmon = secret_file(
        name="upsmon.conf: the UPS it follows, its login and the shutdown command",
        content=Secret(
            "# Managed by homelab-as-code (tasks/base/ups.py): local changes are overwritten.\n"
            f"MONITOR {monitor}\n"
            "MINSUPPLIES 1\n"
            f"SHUTDOWNCMD {nut_quoted(shutdown)}\n"
            "POWERDOWNFLAG /etc/killpower\n"
            f"HOSTSYNC {hostsync}\n"
            "DEADTIME 25\n"
            "FINALDELAY 5\n"
            "RUN_AS_USER nut\n"
        ),
        dest="/etc/nut/upsmon.conf",
        group="nut",
        mode="640",
    )
    return [nut_conf, upsmon]


def _primary(settings: Any) -> None:
    spec = settings.ups
    machine = MACHINE.read(host)
    secondaries = secondaries_of(host.name, {other.name: other.data for other in inventory})
    passwords = _passwords("ups_primary_password", "ups_secondary_password")
    _packages(["nut-server", "nut-client"])
    files.put(
        name="Install homelab-ups-shutdown (guests in reverse start order, then the host)",
        src=file_path("homelab-ups-shutdown"),
        dest=SHUTDOWN_SCRIPT,
        mode="755",
    )
    listen = ["127.0.0.1"] + ([str(machine.lan_address)] if secondaries else [])
    driver = files.template(
        name=f"ups.conf: {spec['driver']} on {spec['port']}",
        src=template_path("nut-ups.conf.j2"),
        dest="/etc/nut/ups.conf",
        mode="640",
        group="nut",
        ups_name=UPS_NAME,
        ups=spec,
    )
    upsd = files.template(
        name=f"upsd.conf: listens on {', '.join(listen)}",
        src=template_path("nut-upsd.conf.j2"),
        dest="/etc/nut/upsd.conf",
        mode="640",
        group="nut",
        listen=listen,
        port=NUT_PORT,
    )
    users = secret_file(
        name="upsd.users: a primary and a secondary login",
        content=Secret(
            "# Managed by homelab-as-code (tasks/base/ups.py): local changes are overwritten.\n"
            "[primary]\n"
            f"\tpassword = {nut_quoted(passwords['ups_primary_password'])}\n"
            "\tupsmon primary\n"
            "[secondary]\n"
            f"\tpassword = {nut_quoted(passwords['ups_secondary_password'])}\n"
            "\tupsmon secondary\n"
        ),
        dest="/etc/nut/upsd.users",
        group="nut",
        mode="640",
    )
    common = _common_files(
        "netserver",
        f"{UPS_NAME}@localhost 1 primary {nut_quoted(passwords['ups_primary_password'])} primary",
        SHUTDOWN_SCRIPT,
        settings.ups_hostsync_seconds,
    )
    # The enumerator turns ups.conf's sections into nut-driver@<name> units.
    systemd.service(
        name="NUT's driver units follow ups.conf",
        service="nut-driver-enumerator.service",
        running=None,
        restarted=True,
        _if=driver.did_change,
    )
    for service, changed in (
        # The driver's own unit, not nut-driver.target: a target's state is "active", which
        # pyinfra's systemd facts do not count as running (it would start it every run).
        (f"nut-driver@{UPS_NAME}.service", any_changed(driver)),
        ("nut-server.service", any_changed(driver, upsd, users, *common)),
        ("nut-monitor.service", any_changed(users, *common)),
    ):
        _running(service, changed)


def _running(service: str, changed: Any) -> None:
    """``service`` on and running; restarted when its configuration changed."""
    systemd.service(name=f"{service} is on", service=service, running=True, enabled=True)
    systemd.service(
        name=f"{service} restarts for its new configuration",
        service=service,
        running=None,
        restarted=True,
        _if=changed,
    )


def _secondary(settings: Any) -> None:
    primary = inventory.get_host(settings.ups_primary, None)
    if primary is None or not primary.data.get("ups"):
        raise DataError(
            host.name, "ups_primary", settings.ups_primary,
            "an inventory host whose data declares its ups",
        )  # fmt: skip
    address = primary.data.get("lan_address")
    _packages(["nut-client"])
    common = _common_files(
        "netclient",
        f"{UPS_NAME}@{address}:{NUT_PORT} 1 secondary"
        f" {nut_quoted(_passwords('ups_secondary_password')['ups_secondary_password'])}"
        " secondary",
        "/sbin/shutdown -h +0",
        settings.ups_hostsync_seconds,
    )
    _running("nut-monitor.service", any_changed(*common))
