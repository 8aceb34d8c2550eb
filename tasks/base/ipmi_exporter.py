"""The board's BMC read in-band: Prometheus's IPMI exporter, where the data declares a BMC.

Server boards (Supermicro, ASRock Rack, iDRAC, iLO) put their fans, temperatures, voltages and
power supplies behind the BMC, where lm-sensors often sees nothing. Where a host's data sets
``bmc: true`` (a machine of its own, never a guest), Debian's ``prometheus-ipmi-exporter``
reads the BMC through the kernel's IPMI driver (``ipmi_si``, ``ipmi_devintf``: ``/dev/ipmi0``)
with FreeIPMI's tools and serves ``ipmi_*`` metrics on the host's LAN address, port 9290, open to
the monitoring guest only. The exporter runs as its package's unprivileged user; the FreeIPMI
tools it needs run through sudo, allowed for exactly those commands (upstream's privileges
guide), in a sudoers file checked with ``visudo -cf`` before it goes live.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from tasks.common.checked_config import checked_template
from tasks.common.datamodel.forms import Bool
from tasks.common.datamodel.keys import DataError, Key, Schema
from tasks.common.datamodel.machine import MACHINE
from tasks.common.ports import Port
from tasks.common.templating import template_path

DATA = Schema(
    "ipmi_exporter",
    Key(
        "bmc",
        Bool(),
        False,
        "The board has a BMC the host reads in-band (/dev/ipmi0): the IPMI exporter reports its"
        " sensors, power supplies, chassis and event log. Machines of their own only.",
    ),
)

PORT = 9290
PORTS = (
    Port(
        PORT,
        "tcp",
        "ipmi-exporter",
        metrics_path="/metrics",
        when=lambda data: bool(data.get("bmc")),
    ),
)
FREEIPMI = "/usr/sbin"
# The exporter's collectors and the FreeIPMI tool each one runs.
COLLECTORS = {
    "ipmi": "ipmimonitoring",
    "bmc": "bmc-info",
    "chassis": "ipmi-chassis",
    "dcmi": "ipmi-dcmi",
    "sel": "ipmi-sel",
}
MODULES = ("ipmi_si", "ipmi_devintf")
CONFIG = "/etc/prometheus/ipmi_homelab.yml"


@deploy("IPMI exporter (BMC)", data_defaults=DATA.defaults())
def ipmi_exporter() -> None:
    settings = DATA.read(host)
    if not settings.bmc:
        return
    machine = MACHINE.read(host)
    if machine.guest is not None:
        raise DataError(
            host.name, "bmc", True, "false on a guest (a VM or container has no BMC of its own)"
        )
    apt.packages(
        name="Install prometheus-ipmi-exporter (and FreeIPMI's tools)",
        packages=["prometheus-ipmi-exporter"],
        no_recommends=True,
    )
    modules = files.template(
        name="The kernel's IPMI drivers load at boot (/dev/ipmi0)",
        src=template_path("modules-load-homelab-ipmi.conf.j2"),
        dest="/etc/modules-load.d/homelab-ipmi.conf",
        mode="644",
        modules=MODULES,
    )
    server.shell(
        name="Load the kernel's IPMI drivers now",
        commands=[f"modprobe -a {' '.join(MODULES)}"],
        _if=modules.did_change,
    )
    sudoers = checked_template(
        name="The IPMI exporter may run FreeIPMI's read tools as root, nothing else",
        template="sudoers-ipmi-exporter.j2",
        dest="/etc/sudoers.d/homelab-ipmi-exporter",
        mode="440",
        check="visudo -cf {}",
        exporter_user="prometheus",
        commands=[f"{FREEIPMI}/{tool}" for tool in sorted(set(COLLECTORS.values()))],
    )
    config = files.template(
        name="IPMI exporter: local collectors through sudo",
        src=template_path("ipmi-exporter.yml.j2"),
        dest=CONFIG,
        mode="644",
        collectors=COLLECTORS,
    )
    defaults = files.template(
        name=f"IPMI exporter listens on {machine.lan_address}:{PORT}",
        src=template_path("prometheus-ipmi-exporter.default.j2"),
        dest="/etc/default/prometheus-ipmi-exporter",
        mode="644",
        config=CONFIG,
        listen=f"{machine.lan_address}:{PORT}",
        freeipmi=FREEIPMI,
    )
    systemd.service(
        name="prometheus-ipmi-exporter is on",
        service="prometheus-ipmi-exporter",
        running=True,
        enabled=True,
    )
    systemd.service(
        name="prometheus-ipmi-exporter restarts for its new settings",
        service="prometheus-ipmi-exporter",
        running=None,
        restarted=True,
        _if=any_changed(sudoers, config, defaults),
    )
