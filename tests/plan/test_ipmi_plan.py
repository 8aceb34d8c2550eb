"""Plans of the IPMI exporter: only where the data declares a BMC, open to monitoring only,
scraped by it, FreeIPMI's read tools through a checked sudoers file; refused on a guest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.plan.harness import Plan, inventory_copy

STAGED = "/etc/homelab/staged/"
SUDOERS = STAGED + "etc_sudoers.d_homelab-ipmi-exporter"
NFTABLES = STAGED + "etc_nftables.conf"
PROMETHEUS_YML = STAGED + "etc_prometheus_prometheus.yml"


def with_bmc(tmp_path: Path, *names: str) -> str:
    change = (
        "for _group in (hypervisor, ageis_node, embedder, monitoring, dns):\n"
        "    for _name, _data in _group:\n"
        f"        if _name in {list(names)!r}:\n"
        "            _data['bmc'] = True\n\n"
    )
    return inventory_copy(tmp_path, change)


@pytest.fixture
def bmc_on_pve(plan_of: Any, tmp_path: Path) -> Plan:
    return plan_of("deploys/full.py", inventory_file=with_bmc(tmp_path, "pve"))


def test_no_bmc_declared_no_exporter_no_port_no_scrape(full: Plan) -> None:
    for name in ("pve", "ageis-node", "embedder", "monitoring", "dns"):
        assert not any("IPMI" in op.name for op in full.for_host(name)), name
    assert "9290" not in full.upload("pve", NFTABLES)
    assert "ipmi-exporter" not in full.upload("monitoring", PROMETHEUS_YML)


def test_a_declared_bmc_is_read_by_the_exporter_on_the_lan_for_monitoring_only(
    bmc_on_pve: Plan,
) -> None:
    plan = bmc_on_pve
    commands = "\n".join(plan.commands("pve"))
    assert "install --no-install-recommends prometheus-ipmi-exporter" in commands
    assert "modprobe -a ipmi_si ipmi_devintf" in commands
    assert (
        plan.upload("pve", "/etc/default/prometheus-ipmi-exporter")
        .strip()
        .endswith(
            'ARGS="--config.file=/etc/prometheus/ipmi_homelab.yml'
            ' --web.listen-address=192.168.1.10:9290 --freeipmi.path=/usr/sbin"'
        )
    )
    sudoers = plan.upload("pve", SUDOERS)
    assert (
        "prometheus ALL = (root) NOPASSWD: /usr/sbin/bmc-info, /usr/sbin/ipmi-chassis,"
        " /usr/sbin/ipmi-dcmi, /usr/sbin/ipmi-sel, /usr/sbin/ipmimonitoring\n"
    ) in sudoers
    assert "visudo -cf" in commands
    config = plan.upload("pve", "/etc/prometheus/ipmi_homelab.yml")
    assert "      ipmi: sudo\n" in config and '      ipmi: ["ipmimonitoring"]\n' in config
    rules = plan.upload("pve", NFTABLES)
    assert 'ip saddr { 192.168.1.40/32 } tcp dport 9290 accept comment "ipmi-exporter"' in rules
    scrape = plan.upload("monitoring", PROMETHEUS_YML)
    job = scrape.split('job_name: "ipmi-exporter"')[1].split("job_name:")[0]
    assert '["192.168.1.10:9290"]' in job and "192.168.1.30" not in job
    # The embedder declares no BMC: nothing of it there.
    assert not any("IPMI" in op.name for op in plan.for_host("embedder"))


def test_a_bmc_on_a_guest_is_refused(plan_of: Any, tmp_path: Path) -> None:
    with pytest.raises(Exception) as caught:  # pyinfra wraps what a deploy raises
        plan_of(
            "deploys/full.py",
            inventory_file=with_bmc(tmp_path, "monitoring"),
            limit=["monitoring"],
        )
    message = str(getattr(caught.value, "exception", caught.value))
    assert message == (
        "host 'monitoring': key 'bmc' is True; expected false on a guest (a VM or container"
        " has no BMC of its own)"
    )
