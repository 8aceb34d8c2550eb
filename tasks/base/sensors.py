"""Hardware sensors: the board's temperature, fan and voltage chips driven, so node-exporter sees
them.

node-exporter reads ``/sys/class/hwmon``, which lists only the chips whose kernel driver is
loaded. CPU sensors (coretemp, k10temp) usually load by themselves; a board's Super I/O chip
(nct6775, it87, w83627ehf: the fans) usually does not, and then the fan alerts have no series
at all. On a machine of its own (no ``guest`` in the data, not a container), this runs lm-sensors'
``sensors-detect --auto`` once (safe probes only, nothing written), writes the drivers it names
to ``/etc/modules-load.d/homelab-sensors.conf`` (loaded at every boot) and loads them now. Later
runs read that file instead of probing again; ``sensor_modules`` names the drivers instead of
detecting them (and an empty list turns this off).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.operations import apt, files, server

from tasks.base.node_exporter import owns_physical_disks
from tasks.common.datamodel.forms import KERNEL_MODULE, FormError, ListOf, Optional
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import MACHINE
from tasks.common.facts import ContainerVirt
from tasks.common.templating import template_path

CONF = "/etc/modules-load.d/homelab-sensors.conf"
_RECORDED = "#homelab-recorded"
_CUT = "#----cut here----"

DATA = Schema(
    "sensors",
    Key(
        "sensor_modules",
        Optional(ListOf(KERNEL_MODULE, unique=True)),
        None,
        "Sensor chip drivers to load at boot (hosts with hardware of their own); None: those"
        " lm-sensors' sensors-detect finds, once; [] loads none.",
    ),
)


class SensorChipDrivers(FactBase[list[str] | None]):
    """The sensor chip drivers of this machine: those recorded in the deploy's modules file,
    else those ``sensors-detect --auto`` lists; None without lm-sensors."""

    reads_other_hosts = False

    def command(self) -> str:
        return (
            "command -v sensors-detect >/dev/null 2>&1 || exit 0; "
            f"if [ -f {CONF} ]; then echo '{_RECORDED}'; cat {CONF}; "
            "else yes '' | sensors-detect --auto 2>/dev/null || true; fi"
        )

    def process(self, output: list[str]) -> list[str] | None:
        return drivers_from(output)


def _is_module(name: str) -> bool:
    try:
        KERNEL_MODULE.check(name)
    except FormError:
        return False
    return True


def drivers_from(output: list[str]) -> list[str] | None:
    """The driver names from the recorded modules file, or from between sensors-detect's two
    "cut here" lines (its "Chip drivers" list for /etc/modules); None if neither is there."""
    lines = [line.strip() for line in output]
    if _RECORDED in lines:
        body = lines[lines.index(_RECORDED) + 1 :]
    elif lines.count(_CUT) >= 2:
        start = lines.index(_CUT)
        body = lines[start + 1 : lines.index(_CUT, start + 1)]
    else:
        return None if not lines else []
    return [line for line in body if line and not line.startswith("#") and _is_module(line)]


@deploy("Hardware sensors", data_defaults=DATA.defaults())
def sensors() -> None:
    settings = DATA.read(host)
    machine = MACHINE.read(host)
    if not owns_physical_disks(machine.guest is not None, host.get_fact(ContainerVirt)):
        host.noop("sensors: a guest or container reads no hardware sensors of its own")
        return
    apt.packages(name="Install lm-sensors", packages=["lm-sensors"], no_recommends=True)
    modules = settings.sensor_modules
    if modules is None:
        modules = host.get_fact(SensorChipDrivers) or []
    conf = files.template(
        name="Sensor chip drivers loaded at boot",
        src=template_path("modules-load-homelab-sensors.conf.j2"),
        dest=CONF,
        mode="644",
        modules=modules,
    )
    server.shell(
        name="Load the sensor chip drivers now",
        commands=[f"modprobe {module}" for module in modules],
        _if=lambda: bool(modules) and conf.did_change(),
    )
