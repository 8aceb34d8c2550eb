"""Prometheus, Alertmanager, the blackbox exporter and the Proxmox VE exporter (monitoring guest).

Every target comes from the inventory, never from a hand-kept list: each inventory host's
declared ports (``ports_of``: ``deploys.roles.declared_ports``, the ``PORTS`` of the tasks it
runs) give

- a scrape job per service that has a ``metrics_path`` (node-exporter on every host, the
  services' own ``/metrics``), labelled ``instance=<inventory host>``;
- a blackbox probe per port that has a ``probe`` kind (``tcp``, ``ssh``, ``dns``,
  ``http:/path``), labelled ``instance`` and ``service``;
- a Proxmox VE scrape (prometheus-pve-exporter, from PyPI in a venv, with a read-only API
  token: secret ``pve_exporter_token_secret``) per hypervisor.

A service another task adds appears here once its task declares its port. Prometheus's config
and rules are checked with ``promtool``, Alertmanager's with ``amtool`` and the blackbox
exporter's with its own ``--config.check`` before they go live (``tasks/common/checked_config.py``).
Alert thresholds, the ``for:`` windows, retention and receivers (webhook, ntfy, e-mail, each
with an optional secret from the secrets file) are data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

from pyinfra import host, inventory, logger
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files, pip, server, systemd
from pyinfra.operations.util import any_changed

from tasks.common.checked_config import checked_template
from tasks.common.datamodel.forms import (
    HOSTNAME,
    Bool,
    Field,
    Int,
    ListOf,
    Optional,
    Size,
    Str,
    Struct,
)
from tasks.common.datamodel.keys import DataError, Key, Schema
from tasks.common.datamodel.machine import HYPERVISOR, MACHINE, MONITORING
from tasks.common.datamodel.secrets import ISSUED, Secret, SecretSpec, load_secrets
from tasks.common.ports import ADMIN, TAILNET, Port, present
from tasks.common.secret_files import secret_file
from tasks.common.templating import template_path

PVE_COLLECTORS = (
    "status",
    "version",
    "node",
    "cluster",
    "resources",
    "backup-info",
    "qdevice",
    "config",
    "replication",
    "subscription",
)
DURATION = Str(r"([0-9]+(ms|s|m|h|d|w|y))+", what='a Prometheus duration such as "30s" or "3d"')
DECIMAL = Str(r"[0-9]+(\.[0-9]+)?", what='a decimal number such as "0.5"')
URL = Str(r"https?://[^\s\"']+", what='an http(s) URL such as "https://ntfy.example/homelab"')
EMAIL = Str(r"[^@\s\"]+@[^@\s\"]+", what='an e-mail address such as "ops@example.org"')
SECRET_NAME = Str(r"[a-z][a-z0-9_]*", what='a secret name such as "alert_ntfy_token"')

RECEIVER = Struct(
    {
        "name": Field(Str(r"[a-z][a-z0-9_-]*", what='a receiver name such as "phone"')),
        "kind": Field(Str(choices=("webhook", "ntfy", "email"))),
        "url": Field(
            Optional(URL), required=False, doc="webhook URL, or the ntfy topic URL (ntfy)"
        ),
        "to": Field(Optional(EMAIL), required=False, doc="recipient (email)"),
        "from": Field(Optional(EMAIL), required=False, doc="sender (email)"),
        "smarthost": Field(
            Optional(Str(r"[^\s:]+:[0-9]+", what='host:port such as "mail.example.org:587"')),
            required=False,
            doc="SMTP server host:port (email)",
        ),
        "username": Field(Optional(Str()), required=False, doc="SMTP user (email)"),
        "secret": Field(
            Optional(SECRET_NAME),
            required=False,
            doc="name of a secret in the secrets file: bearer token (webhook, ntfy) or SMTP"
            " password (email)",
        ),
    },
    what="a receiver with name, kind (optional: url, to, from, smarthost, username, secret)",
)


def _receiver_problems(values: Mapping[str, Any]) -> Iterable[tuple[str, Any, str]]:
    for index, receiver in enumerate(values["alert_receivers"]):
        key = f"alert_receivers[{index}]"
        if receiver["kind"] in ("webhook", "ntfy") and not receiver.get("url"):
            yield f"{key}.url", None, f"a URL for a {receiver['kind']} receiver"
        if receiver["kind"] == "email":
            for needed in ("to", "from", "smarthost"):
                if not receiver.get(needed):
                    yield f"{key}.{needed}", None, f"{needed} for an email receiver"
    names = [receiver["name"] for receiver in values["alert_receivers"]]
    if len(set(names)) != len(names) or "null" in names:
        yield "alert_receivers", names, "distinct receiver names, none called 'null'"


G = (MONITORING,)
DATA = Schema(
    "monitoring",
    Key(
        "prometheus_retention_time",
        DURATION,
        "400d",
        "How long Prometheus keeps samples (trends over weeks and seasons need months).",
        G,
    ),
    Key(
        "prometheus_retention_size",
        Optional(Size()),
        None,
        "Most disk Prometheus's samples may use; None: 60 % of the guest's disk_size on a"
        " guest of the data (the rest is the system's, the write-ahead log's and compaction's),"
        " else only the time limit.",
        G,
    ),
    Key("prometheus_scrape_interval", DURATION, "30s", "How often every target is scraped.", G),
    Key("prometheus_evaluation_interval", DURATION, "30s", "How often alert rules are checked.", G),
    Key(
        "alert_down_for",
        DURATION,
        "5m",
        "A host, scrape target or probe down this long alerts (the lab shortens it).",
        G,
    ),
    Key("alert_cpu_temp_celsius", Int(30, 120), 80, "CPU temperature sustained above: alert.", G),
    Key("alert_gpu_temp_celsius", Int(30, 120), 85, "GPU temperature sustained above: alert.", G),
    Key(
        "alert_drive_temp_celsius", Int(20, 90), 50, "Drive temperature sustained above: alert.", G
    ),
    Key(
        "alert_temp_rise_per_day",
        DECIMAL,
        "0.5",
        "Degrees per day a temperature must be rising by, over alert_trend_window, to alert.",
        G,
    ),
    Key(
        "alert_trend_window",
        DURATION,
        "3d",
        "Window of the thermal trend (deriv over hourly means): days, not a spike.",
        G,
    ),
    Key(
        "alert_sustained_for",
        DURATION,
        "6h",
        "How long a hot-and-rising temperature must last before it alerts.",
        G,
    ),
    Key(
        "alert_temp_baseline_rise_celsius",
        DECIMAL,
        "2",
        "A temperature whose recent mean (alert_temp_baseline_recent) is this much above its"
        " own longer mean (alert_temp_baseline_window) alerts, however far below the absolute"
        " thresholds: a slow warming (dust, a drying paste, a failing fan) is the earliest sign.",
        G,
    ),
    Key(
        "alert_temp_baseline_recent",
        DURATION,
        "7d",
        "The recent mean of the baseline comparison.",
        G,
    ),
    Key(
        "alert_temp_baseline_window",
        DURATION,
        "28d",
        "The baseline: the longer mean the recent one is compared with (needs at least three"
        " quarters of it as history).",
        G,
    ),
    Key(
        "alert_guest_restore_test_max_age_days",
        Int(1, 90),
        8,
        "An LXC guest whose backup restore test has not passed for this long alerts (and so"
        " does a restore test that has not run); it runs weekly.",
        G,
    ),
    Key(
        "alert_guest_backup_max_age_hours",
        Int(1, 24 * 90),
        26,
        "A guest whose newest vzdump backup is older than this (or that has none) alerts; the"
        " job runs nightly.",
        G,
    ),
    Key(
        "alert_link_flaps",
        Int(1, 1000),
        1,
        "A network link that lost its carrier this many times within alert_link_flap_window"
        " alerts (a 30 s unplug counts once).",
        G,
    ),
    Key(
        "alert_link_flap_window",
        DURATION,
        "1h",
        "The window link flaps and failed probes are counted over.",
        G,
    ),
    Key(
        "alert_fan_drop_percent",
        Int(5, 95),
        30,
        "A fan slower than its own 7-day mean by this much alerts (0 rpm: stopped).",
        G,
    ),
    Key(
        "alert_nvme_used_percent",
        Int(1, 100),
        80,
        "NVMe percentage used (endurance) at or above: alert.",
        G,
    ),
    Key(
        "alert_ssd_wear_left_percent",
        Int(1, 99),
        20,
        "SATA SSD wear indicator (normalised, 100 = new) at or below: alert.",
        G,
    ),
    Key(
        "alert_nvme_spare_margin_percent",
        Int(0, 50),
        10,
        "NVMe available spare within this many points of its threshold: alert.",
        G,
    ),
    Key(
        "alert_ssd_fill_percent",
        Int(50, 99),
        85,
        "A file system of the SSD tier (the hypervisor's SSD pools, the roots of the guests on"
        " them) fuller than this: alert, before models or data fill it.",
        G,
    ),
    Key(
        "alert_fill_window",
        DURATION,
        "6h",
        "History the filesystem fill prediction extrapolates from.",
        G,
    ),
    Key(
        "alert_fill_for",
        DURATION,
        "1h",
        "How long a fill-within-24h prediction must hold before it alerts.",
        G,
    ),
    Key(
        "alert_wal_failing_for",
        DURATION,
        "15m",
        "WAL archiving failing (last failure newer than last success) this long alerts.",
        G,
    ),
    Key("alert_backup_max_age_hours", Int(1, 720), 26, "Last backup older than this: alert.", G),
    Key(
        "alert_restore_test_max_age_days",
        Int(1, 90),
        8,
        "Last successful restore test older than this: alert.",
        G,
    ),
    Key(
        "alert_clock_offset_ms",
        Int(1, 60000),
        100,
        "Clock offset from NTP above this many milliseconds alerts.",
        G,
    ),
    Key(
        "alert_receivers",
        ListOf(RECEIVER),
        [],
        "Where alerts go: webhook, ntfy or email receivers; [] keeps them in Alertmanager only.",
        G,
    ),
    Key("alertmanager_group_wait", DURATION, "30s", "Wait before the first notification.", G),
    Key("alertmanager_group_interval", DURATION, "5m", "Wait between updates of a group.", G),
    Key("alertmanager_repeat_interval", DURATION, "4h", "Repeat a still-firing notification.", G),
    Key(
        "pve_exporter_version",
        Str(r"[0-9]+(\.[0-9]+)*", what='a version such as "3.10.2"'),
        "3.10.2",
        "prometheus-pve-exporter version installed from PyPI (a venv on the monitoring guest).",
        G,
    ),
    Key(
        "pve_exporter_wheelhouse",
        Optional(Str(r"[~/][^\0]*", what='a directory on the controller such as "~/wheels"')),
        None,
        "A directory of wheels on the controller to install the exporter from, with no index"
        " (offline installs, the lab); None: PyPI.",
        G,
    ),
    Key(
        "pve_exporter_user",
        Str(r"[^@\s]+@(pam|pve|[a-z0-9-]+)", what='a Proxmox user such as "monitoring@pve"'),
        "monitoring@pve",
        "Proxmox user of the exporter's read-only API token (role PVEAuditor).",
        G,
    ),
    Key(
        "pve_exporter_token_name",
        Str(r"[A-Za-z][A-Za-z0-9._-]*", what='a token ID such as "exporter"'),
        "exporter",
        "Token ID of that user; its secret is pve_exporter_token_secret.",
        G,
    ),
    Key(
        "pve_exporter_disabled_collectors",
        ListOf(Str(choices=PVE_COLLECTORS), unique=True),
        [],
        "prometheus-pve-exporter collectors switched off (--no-collector.NAME).",
        G,
    ),
    Key(
        "pve_exporter_verify_tls",
        Bool(),
        True,
        "Verify the Proxmox API's TLS certificate against the CA the controller trusts for"
        " each hypervisor (recorded on first contact, or proxmox_api_ca_file), or the"
        " system's CAs where a hypervisor uses those.",
        G,
    ),
    Key(
        "monitoring_extra_probes",
        ListOf(
            Struct(
                {
                    "host": Field(HOSTNAME, doc="inventory host"),
                    "port": Field(Int(1, 65535)),
                    "service": Field(Str(r"[a-z0-9][a-z0-9_.-]*", what="a service name")),
                    "probe": Field(
                        Str(r"(tcp|ssh|dns|http:/\S*)", what="tcp, ssh, dns or http:/PATH")
                    ),
                },
                what="a probe with host, port, service, probe",
            )
        ),
        [],
        "Probes of services added by hand (not declared by a task).",
        G,
    ),
    checks=(_receiver_problems,),
)

SECRETS = (
    SecretSpec(
        "pve_exporter_token_secret",
        G,
        "the secret of the read-only Proxmox API token pve_exporter_user!pve_exporter_token_name"
        " (pveum user token add monitoring@pve exporter --privsep 0; role PVEAuditor on /)",
        ISSUED,
    ),
)

PORTS = (
    # Prometheus' UI and query API are read-only (no admin API): the admin's devices may read.
    Port(9090, "tcp", "prometheus", metrics_path="/metrics", consumers=(ADMIN,)),
    # Alertmanager's silences change what pages: the tailnet only.
    Port(9093, "tcp", "alertmanager", metrics_path="/metrics", consumers=(TAILNET,)),
    Port(9115, "tcp", "blackbox-exporter", probe=None, metrics_path="/metrics"),
)

PACKAGES = [
    "prometheus",
    "prometheus-alertmanager",
    "prometheus-blackbox-exporter",
    "python3-venv",
]
CONFIG_DIR = "/etc/prometheus"
RULES = f"{CONFIG_DIR}/rules/homelab.rules.yml"
SECRETS_DIR = f"{CONFIG_DIR}/secrets"
PVE_VENV = "/opt/prometheus-pve-exporter"
PVE_CA_BUNDLE = f"{CONFIG_DIR}/pve-api-ca.pem"
WHEELHOUSE = "/var/cache/homelab/pve-exporter-wheels"
BLACKBOX = "127.0.0.1:9115"
# Loopback only: the exporter logs in to whatever /pve?target= names, with the API token, so
# only Prometheus beside it may ask (its targets come from the inventory). Its health shows as
# up{job="pve"}.
PVE_EXPORTER = "127.0.0.1:9221"
BLACKBOX_MODULES = {
    "tcp": "tcp_connect",
    "ssh": "ssh_banner",
    "dns": "dns_local",
    "http": "http_2xx",
}


@dataclass(frozen=True)
class ScrapeJob:
    """One scrape job: a service's metrics endpoint on each host that runs it."""

    name: str
    metrics_path: str
    targets: list[tuple[str, str]] = field(default_factory=list)  # (address:port, instance)


@dataclass(frozen=True)
class Probe:
    """One blackbox probe: module, target (address:port or URL), instance and service."""

    module: str
    target: str
    instance: str
    service: str


@dataclass(frozen=True)
class InventoryHost:
    name: str
    address: str
    groups: tuple[str, ...]
    # Its data, for the ports that exist only where the data says (Port.when).
    data: Mapping[str, Any] = field(default_factory=dict, compare=False)


# Interfaces that follow guests, firewalls and peers rather than a cable (a regex of device
# names): no flap or speed alerts.
VIRTUAL_LINKS = "lo|tap.*|veth.*|fwbr.*|fwln.*|fwpr.*|tailscale.*|docker.*|virbr.*"

# Share of a guest's disk Prometheus's samples may fill when the data sets no size.
RETENTION_DISK_SHARE = 0.6


def retention_size(configured: int | None, guest: Mapping[str, Any] | None) -> int | None:
    """Prometheus's size limit in bytes: the data's, else a share of the guest's disk."""
    if configured is not None:
        return configured
    if guest and guest.get("disk_size"):
        return int(guest["disk_size"] * RETENTION_DISK_SHARE)
    return None


def probe_for(port: Port | Mapping[str, Any], address: str) -> tuple[str, str]:
    """(blackbox module, target) for a port's probe kind."""
    kind = port["probe"] if isinstance(port, Mapping) else port.probe
    number = port["port"] if isinstance(port, Mapping) else port.port
    if kind.startswith("http:"):
        return BLACKBOX_MODULES["http"], f"http://{address}:{number}{kind.removeprefix('http:')}"
    return BLACKBOX_MODULES[kind], f"{address}:{number}"


def monitoring_targets(
    hosts: Iterable[InventoryHost],
    ports_of: Any,
    extra_probes: Iterable[Mapping[str, Any]] = (),
) -> tuple[list[ScrapeJob], list[Probe], list[tuple[str, str]]]:
    """Scrape jobs, probes and Proxmox targets for ``hosts``; ``ports_of(groups)`` gives ports.

    Jobs are named after the service (``node-exporter``, ``actr-engine``); a service whose
    metrics path differs between hosts gets one job per path. Sorted, so the config is stable.
    """
    hosts = sorted(hosts, key=lambda h: h.name)
    jobs: dict[tuple[str, str], ScrapeJob] = {}
    probes: list[Probe] = []
    for inv_host in hosts:
        for port in present(ports_of(inv_host.groups), inv_host.data):
            if port.metrics_path:
                key = (port.service, port.metrics_path)
                job = jobs.setdefault(key, ScrapeJob(port.service, port.metrics_path))
                job.targets.append((f"{inv_host.address}:{port.port}", inv_host.name))
            if port.probe and not port.loopback:  # a loopback port is probed on its host
                module, target = probe_for(port, inv_host.address)
                probes.append(Probe(module, target, inv_host.name, port.service))
    by_name = {h.name: h for h in hosts}
    for extra in extra_probes:
        if extra["host"] not in by_name:
            raise DataError(
                host.name if host else "monitoring",
                "monitoring_extra_probes",
                extra["host"],
                f"an inventory host ({', '.join(sorted(by_name))})",
            )
        module, target = probe_for(extra, by_name[extra["host"]].address)
        probes.append(Probe(module, target, extra["host"], extra["service"]))
    names = [name for name, _ in jobs]
    scrape = []
    for (name, path), job in sorted(jobs.items()):
        job_name = name if names.count(name) == 1 else f"{name}{path.replace('/', '-')}"
        scrape.append(ScrapeJob(job_name, path, job.targets))
    pve = [(h.address, h.name) for h in hosts if HYPERVISOR in h.groups]
    probes.sort(key=lambda p: (p.instance, p.service, p.target))
    return scrape, probes, pve


def inventory_hosts() -> list[InventoryHost]:
    return [
        InventoryHost(
            other.name, str(MACHINE.read(other).lan_address), tuple(other.groups), other.data
        )
        for other in inventory
    ]


def pool_tier(pool: Mapping[str, Any], name: str, disks: Iterable[Mapping[str, Any]]) -> str | None:
    """A pool's tier: its ``tier``, else its disks' kind (ssd and nvme: ssd), else None."""
    if pool.get("tier"):
        return str(pool["tier"])
    kinds = {disk.get("kind") for disk in disks if disk.get("pool") == name}
    if kinds and kinds <= {"ssd", "nvme"}:
        return "ssd"
    return "hdd" if kinds == {"hdd"} else None


def ssd_filesystems(hosts: Iterable[InventoryHost]) -> list[tuple[str, str]]:
    """(instance, mount point) of the file systems on the SSD tier: each hypervisor's SSD pools,
    and the root of every guest whose disk lives on one (ageis-node's models, for one)."""
    found: list[tuple[str, str]] = []
    ssd_pools: dict[tuple[str, str], bool] = {}
    for other in hosts:
        pools = other.data.get("pools") or {}
        disks = other.data.get("disks") or []
        if HYPERVISOR not in other.groups:
            continue
        for name, pool in sorted(pools.items()):
            if pool_tier(pool, name, disks) == "ssd":
                ssd_pools[(other.name, name)] = True
                found.append((other.name, str(pool["path"])))
    for other in hosts:
        guest = other.data.get("guest") or {}
        if ssd_pools.get((guest.get("hypervisor"), guest.get("storage"))):
            found.append((other.name, "/"))
    return sorted(found)


def ssd_selector(filesystems: Iterable[tuple[str, str]]) -> str:
    """A PromQL selector of those file systems' sizes (none: a selector that matches none)."""
    parts = [
        f"node_filesystem_size_bytes{{instance={json.dumps(i)},mountpoint={json.dumps(m)}}}"
        for i, m in filesystems
    ]
    return " or ".join(parts) or 'node_filesystem_size_bytes{mountpoint=""}'


def _duration_seconds(text: str) -> int:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return int(sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", text)))


def rule_variables(
    settings: Mapping[str, Any], ssd: Iterable[tuple[str, str]] = ()
) -> dict[str, Any]:
    """What templates/prometheus-homelab.rules.yml.j2 needs, from the data (or its defaults)
    and the SSD tier's file systems (``ssd_filesystems``)."""
    return {
        "ssd_selector": ssd_selector(ssd),
        "ssd_fill_percent": settings["alert_ssd_fill_percent"],
        "down_for": settings["alert_down_for"],
        "cpu_temp": settings["alert_cpu_temp_celsius"],
        "gpu_temp": settings["alert_gpu_temp_celsius"],
        "drive_temp": settings["alert_drive_temp_celsius"],
        "rise_per_day": settings["alert_temp_rise_per_day"],
        "trend_window": settings["alert_trend_window"],
        "sustained_for": settings["alert_sustained_for"],
        "fan_keep": round(1 - settings["alert_fan_drop_percent"] / 100, 2),
        "baseline_rise": settings["alert_temp_baseline_rise_celsius"],
        "baseline_recent": settings["alert_temp_baseline_recent"],
        "baseline_window": settings["alert_temp_baseline_window"],
        "baseline_history_seconds": _duration_seconds(settings["alert_temp_baseline_window"])
        * 3
        // 4,
        "link_flaps": settings["alert_link_flaps"],
        "guest_backup_max_age": settings["alert_guest_backup_max_age_hours"] * 3600,
        "guest_backup_max_age_hours": settings["alert_guest_backup_max_age_hours"],
        "guest_restore_max_age": settings["alert_guest_restore_test_max_age_days"] * 86400,
        "guest_restore_max_age_days": settings["alert_guest_restore_test_max_age_days"],
        "flap_window": settings["alert_link_flap_window"],
        "virtual_links": VIRTUAL_LINKS,
        "nvme_used": round(settings["alert_nvme_used_percent"] / 100, 2),
        "ssd_wear_left": settings["alert_ssd_wear_left_percent"],
        "nvme_spare_margin": round(settings["alert_nvme_spare_margin_percent"] / 100, 2),
        "fill_window": settings["alert_fill_window"],
        "fill_for": settings["alert_fill_for"],
        "wal_failing_for": settings["alert_wal_failing_for"],
        "backup_max_age": settings["alert_backup_max_age_hours"] * 3600,
        "backup_max_age_hours": settings["alert_backup_max_age_hours"],
        "restore_max_age": settings["alert_restore_test_max_age_days"] * 86400,
        "restore_max_age_days": settings["alert_restore_test_max_age_days"],
        "clock_offset": settings["alert_clock_offset_ms"] / 1000,
        "clock_offset_ms": settings["alert_clock_offset_ms"],
    }


def alertmanager_variables(settings: Mapping[str, Any]) -> dict[str, Any]:
    receivers = []
    for receiver in settings["alert_receivers"]:
        entry = dict(receiver)
        entry["secret_file"] = (
            f"{SECRETS_DIR}/{receiver['secret']}" if receiver.get("secret") else None
        )
        if receiver["kind"] == "ntfy":
            # ntfy's built-in template turns Alertmanager's webhook JSON into a message.
            separator = "&" if "?" in receiver["url"] else "?"
            entry["url"] = f"{receiver['url']}{separator}template=alertmanager"
        receivers.append(entry)
    return {
        "receivers": receivers,
        "group_wait": settings["alertmanager_group_wait"],
        "group_interval": settings["alertmanager_group_interval"],
        "repeat_interval": settings["alertmanager_repeat_interval"],
    }


PortsOf = Callable[[Iterable[str]], Iterable[Port]]


@dataclass(frozen=True)
class PrometheusConfig:
    """Prometheus's settings, rules and scrape config: the operations that write them."""

    defaults: OperationMeta
    rules: OperationMeta
    config: OperationMeta


@deploy("Monitoring: Prometheus, Alertmanager, blackbox and Proxmox exporters")
def monitoring(ports_of: PortsOf) -> None:
    """``ports_of(groups)``: the ports a host of those groups declares (``deploys.roles``
    passes its ``declared_ports``, so this module needs no knowledge of the role table)."""
    settings = DATA.read(host)
    machine = MACHINE.read(host)
    secrets = load_secrets()
    needed = _receiver_secrets(settings, secrets)
    jobs, probes, pve_targets = monitoring_targets(
        inventory_hosts(), ports_of, settings.monitoring_extra_probes
    )
    dns_hosts = [other.name for other in inventory if "dns" in other.groups]
    dns_probe_name = f"{(dns_hosts or [host.name])[0]}.{machine.domain}"

    secret_files = _install(needed, secrets)
    prometheus = _prometheus(settings, jobs, probes, pve_targets)
    _alertmanager(settings, secret_files)
    _blackbox_exporter(dns_probe_name)
    _pve_exporter(settings)
    server.shell(
        name="Prometheus answers its health check",
        commands=[
            "for i in $(seq 1 60); do curl -fsS -o /dev/null http://127.0.0.1:9090/-/ready"
            " && exit 0; sleep 1; done; echo 'Prometheus is not ready after 60 s' >&2; exit 1"
        ],
        _if=any_changed(prometheus.defaults, prometheus.rules, prometheus.config),
    )


def _receiver_secrets(settings: Any, secrets: Mapping[str, Any]) -> list[str]:
    """The secrets the alert receivers name, sorted; one the secrets file lacks stops the run."""
    needed = sorted({r["secret"] for r in settings.alert_receivers if r.get("secret")})
    missing = [name for name in needed if name not in secrets]
    if missing:
        raise DataError(
            host.name,
            "alert_receivers",
            missing,
            "secrets that exist in the secrets file (or HOMELAB_SECRET_<NAME>)",
        )
    return needed


def _install(needed: list[str], secrets: Mapping[str, Any]) -> list[OperationMeta]:
    """The packages, the rules and secrets directories and the receivers' secret files;
    returns the secret files' operations."""
    apt.packages(
        name="Install Prometheus, Alertmanager, the blackbox exporter, python3-venv",
        packages=PACKAGES,
        no_recommends=True,
    )
    files.directory(
        name="Rules directory", path=f"{CONFIG_DIR}/rules", user="root", group="root", mode="755"
    )
    files.directory(
        name="Secrets directory (receivers, Proxmox token)",
        path=SECRETS_DIR,
        user="root",
        group="prometheus",
        mode="750",
    )
    secret_files = []
    for name in needed:
        secret_files.append(
            secret_file(
                name=f"Receiver secret {name}",
                content=secrets[name],
                dest=f"{SECRETS_DIR}/{name}",
                user="root",
                group="prometheus",
                mode="640",
            )
        )
    return secret_files


def _prometheus(
    settings: Any,
    jobs: list[ScrapeJob],
    probes: list[Probe],
    pve_targets: list[tuple[str, str]],
) -> PrometheusConfig:
    """Prometheus's settings, its checked rules and scrape config; it runs, restarted for new
    settings and reloaded for a new config or rules."""
    defaults = files.template(
        name="Prometheus: retention and listen address",
        src=template_path("prometheus.default.j2"),
        dest="/etc/default/prometheus",
        mode="644",
        retention_time=settings.prometheus_retention_time,
        retention_size=retention_size(settings.prometheus_retention_size, MACHINE.read(host).guest),
    )
    rules = checked_template(
        name="Prometheus: alert rules",
        template="prometheus-homelab.rules.yml.j2",
        dest=RULES,
        mode="644",
        check="promtool check rules {}",
        **rule_variables(settings, ssd_filesystems(inventory_hosts())),
    )
    config = checked_template(
        name="Prometheus: scrape config from the inventory",
        template="prometheus.yml.j2",
        dest=f"{CONFIG_DIR}/prometheus.yml",
        mode="644",
        check="promtool check config {}",
        scrape_interval=settings.prometheus_scrape_interval,
        evaluation_interval=settings.prometheus_evaluation_interval,
        rules_file=RULES,
        jobs=jobs,
        probes=probes,
        pve_targets=pve_targets,
        blackbox=BLACKBOX,
        pve_exporter=PVE_EXPORTER,
    )
    systemd.service(name="Run Prometheus", service="prometheus", running=True, enabled=True)
    systemd.service(
        name="Restart Prometheus for its new settings",
        service="prometheus",
        running=None,
        restarted=True,
        _if=defaults.did_change,
    )
    systemd.service(
        name="Reload Prometheus for its new config or rules",
        service="prometheus",
        running=None,
        reloaded=True,
        _if=any_changed(rules, config),
    )
    return PrometheusConfig(defaults, rules, config)


def _alertmanager(settings: Any, secret_files: list[OperationMeta]) -> None:
    """Alertmanager as a single node with its checked routes and receivers; it runs, restarted
    for a new config or receiver secret."""
    am_defaults = files.template(
        name="Alertmanager: single node (no cluster port)",
        src=template_path("prometheus-alertmanager.default.j2"),
        dest="/etc/default/prometheus-alertmanager",
        mode="644",
    )
    am_config = checked_template(
        name="Alertmanager: routes and receivers",
        template="alertmanager.yml.j2",
        dest=f"{CONFIG_DIR}/alertmanager.yml",
        mode="644",
        check="amtool check-config {}",
        **alertmanager_variables(settings),
    )
    systemd.service(
        name="Run Alertmanager", service="prometheus-alertmanager", running=True, enabled=True
    )
    systemd.service(
        name="Restart Alertmanager for its new config or secrets",
        service="prometheus-alertmanager",
        running=None,
        restarted=True,
        _if=any_changed(am_defaults, am_config, *secret_files),
    )


def _blackbox_exporter(dns_probe_name: str) -> None:
    """The blackbox exporter's checked probe modules; it runs, restarted for a new config."""
    bb_config = checked_template(
        name="Blackbox exporter: probe modules",
        template="blackbox.yml.j2",
        dest=f"{CONFIG_DIR}/blackbox.yml",
        mode="644",
        check="prometheus-blackbox-exporter --config.check --config.file {}",
        dns_probe_name=dns_probe_name,
    )
    systemd.service(
        name="Run the blackbox exporter",
        service="prometheus-blackbox-exporter",
        running=True,
        enabled=True,
    )
    systemd.service(
        name="Restart the blackbox exporter for its new config",
        service="prometheus-blackbox-exporter",
        running=None,
        restarted=True,
        _if=bb_config.did_change,
    )


def _pve_exporter(settings: Any) -> None:
    """prometheus-pve-exporter from PyPI (or a wheelhouse) in a venv, its token and unit; it
    runs, restarted for a new version, token or unit."""
    venv = pip.venv(name="Venv for prometheus-pve-exporter", path=PVE_VENV, python="python3")
    install_args = None
    if settings.pve_exporter_wheelhouse:
        wheelhouse = Path(settings.pve_exporter_wheelhouse).expanduser()
        if not wheelhouse.is_dir():
            raise DataError(
                host.name, "pve_exporter_wheelhouse", str(wheelhouse), "an existing directory"
            )
        files.sync(
            name="Wheelhouse for prometheus-pve-exporter (no index)",
            src=str(wheelhouse),
            dest=WHEELHOUSE,
            delete=True,
        )
        install_args = f"--no-index --find-links {WHEELHOUSE}"
    exporter = pip.packages(
        name=f"Install prometheus-pve-exporter {settings.pve_exporter_version}",
        packages=[f"prometheus-pve-exporter=={settings.pve_exporter_version}"],
        pip=f"{PVE_VENV}/bin/pip",
        extra_install_args=install_args,
    )
    # The hosts' umask is 027 (hardening): the exporter's user must be able to read its code.
    server.shell(
        name="Proxmox exporter: its venv readable by the exporter's user",
        commands=[f"chmod -R a+rX {PVE_VENV}"],
        _if=any_changed(venv, exporter),
    )
    verify, ca_bundle = _pve_verification(settings.pve_exporter_verify_tls)
    ca: OperationMeta | None = None
    if ca_bundle is not None:
        ca = files.put(
            name="Proxmox exporter: the hypervisors' API CAs (as this controller trusts them)",
            src=StringIO(ca_bundle),
            dest=PVE_CA_BUNDLE,
            mode="644",
        )
    elif verify != PVE_CA_BUNDLE:
        ca = files.file(
            name="Proxmox exporter: no CA file (the system's CAs, or no verification)",
            path=PVE_CA_BUNDLE,
            present=False,
        )
    token = secret_file(
        name="Proxmox exporter: read-only API token (secret)",
        content=Secret(
            _pve_config(
                settings.pve_exporter_user,
                settings.pve_exporter_token_name,
                load_secrets()["pve_exporter_token_secret"].reveal(),
                verify,
            )
        ),
        dest=f"{CONFIG_DIR}/pve.yml",
        user="root",
        group="prometheus",
        mode="640",
    )
    unit = files.template(
        name="Proxmox exporter: systemd unit",
        src=template_path("prometheus-pve-exporter.service.j2"),
        dest="/etc/systemd/system/prometheus-pve-exporter.service",
        mode="644",
        venv=PVE_VENV,
        config=f"{CONFIG_DIR}/pve.yml",
        listen=PVE_EXPORTER,
        disabled=settings.pve_exporter_disabled_collectors,
    )
    systemd.daemon_reload(name="Proxmox exporter: reload systemd", _if=unit.did_change)
    systemd.service(
        name="Run the Proxmox exporter",
        service="prometheus-pve-exporter",
        running=True,
        enabled=True,
    )
    systemd.service(
        name="Restart the Proxmox exporter for its new version, token or unit",
        service="prometheus-pve-exporter",
        running=None,
        restarted=True,
        _if=any_changed(exporter, token, unit, *([ca] if ca else [])),
    )


def _pve_verification(wanted: bool) -> tuple[bool | str, str | None]:
    """How the exporter verifies the hypervisors' APIs: (``verify_ssl``, the CA bundle to
    write or None). The bundle joins the CA files this controller verifies each hypervisor
    with (recorded or configured); a hypervisor whose CA is not recorded yet leaves the file on
    the host as it is, until a run over that hypervisor records it."""
    from tasks.hypervisor.proxmox_api import ProxmoxError, tls_verification

    if not wanted:
        return False, None
    bundle, system, waiting = [], [], []
    for hypervisor in inventory:
        if HYPERVISOR not in hypervisor.groups:
            continue
        try:
            verification = tls_verification(hypervisor)
        except ProxmoxError:
            waiting.append(hypervisor.name)
            continue
        if isinstance(verification, str):
            bundle.append(Path(verification).read_text().strip() + "\n")
        elif verification:
            system.append(hypervisor.name)
    if system and (bundle or waiting):
        raise DataError(
            host.name,
            "pve_exporter_verify_tls",
            True,
            f"one way of verifying every hypervisor: {', '.join(system)} use the system's CAs,"
            " the others their own CA, and one exporter config cannot verify both",
        )
    if waiting:
        logger.warning(
            f"{host.name}: the Proxmox API CA of {', '.join(waiting)} is not recorded on this"
            " controller yet: the exporter keeps its CA file until a run over"
            f" {', '.join(waiting)} records it"
        )
        return PVE_CA_BUNDLE, None
    if bundle:
        return PVE_CA_BUNDLE, "".join(bundle)
    return bool(system), None


def _pve_config(user: str, token_name: str, token_value: str, verify_tls: bool | str) -> str:
    """prometheus-pve-exporter's pve.yml (module ``default``), as uploaded file content;
    ``verify_tls`` is a bool or the CA file to verify against (requests' ``verify``)."""

    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return (
        "# Managed by homelab-as-code (tasks/services/monitoring.py):"
        " local changes are overwritten.\n"
        "default:\n"
        f"  user: {quoted(user)}\n"
        f"  token_name: {quoted(token_name)}\n"
        f"  token_value: {quoted(token_value)}\n"
        + (
            f"  verify_ssl: {quoted(verify_tls)}\n"
            if isinstance(verify_tls, str)
            else f"  verify_ssl: {'true' if verify_tls else 'false'}\n"
        )
    )
