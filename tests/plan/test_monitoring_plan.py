"""Plans of monitoring on the real machines' facts: collectors per host, targets from the inventory.

The real inventory: pve (hypervisor, physical disks, R9700 passed through), ageis-node (VM with
the R9700), embedder (physical, GTX 1650 Super), monitoring and dns (LXC guests). The configs
the plan uploads are checked with the same promtool/amtool the deploy runs on the host.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.plan.harness import Plan
from tests.prometheus_tools import run

STAGED = "/etc/homelab/staged/"
PROMETHEUS_YML = STAGED + "etc_prometheus_prometheus.yml"
RULES = STAGED + "etc_prometheus_rules_homelab.rules.yml"
ALERTMANAGER_YML = STAGED + "etc_prometheus_alertmanager.yml"
ADDRESSES = {
    "pve": "192.168.1.10",
    "ageis-node": "192.168.1.20",
    "embedder": "192.168.1.30",
    "monitoring": "192.168.1.40",
    "dns": "192.168.1.50",
}


def op_names(plan: Plan, host: str) -> list[str]:
    return [op.name for op in plan.for_host(host)]


def test_node_exporter_on_every_host(full: Plan) -> None:
    for host in ADDRESSES:
        ops = "\n".join(plan_op.name for plan_op in full.for_host(host))
        assert "Install prometheus-node-exporter and its textfile collectors" in ops, host
        commands = "\n".join(full.commands(host))
        assert "prometheus-node-exporter" in commands and "--no-install-recommends" in commands


def test_smart_timers_only_where_physical_disks_are(full: Plan) -> None:
    for host in ("pve", "embedder"):
        commands = "\n".join(full.commands(host))
        assert "smartmontools" in commands and "nvme-cli" in commands, host
        assert "systemctl enable prometheus-node-exporter-smartmon.timer" in commands, host
        assert "systemctl start prometheus-node-exporter-nvme.timer" in commands, host
    for host in ("ageis-node", "monitoring", "dns"):
        commands = "\n".join(full.commands(host))
        assert "smartmontools" not in commands, host
        names = op_names(full, host)
        assert any("Disable prometheus-node-exporter-smartmon.timer" in n for n in names), host
        assert "systemctl start prometheus-node-exporter-smartmon.timer" not in commands, host


def test_gpu_collectors_follow_the_declared_gpus(full: Plan) -> None:
    amd = full.upload("ageis-node", "/etc/systemd/system/homelab-gpu-metrics.service")
    assert "--vendor amd --output /var/lib/prometheus/node-exporter/homelab-gpu.prom" in amd
    nvidia = full.upload("embedder", "/etc/systemd/system/homelab-gpu-metrics.service")
    assert "--vendor nvidia" in nvidia
    assert "systemctl start homelab-gpu-metrics.timer" in "\n".join(full.commands("embedder"))
    # The hypervisor's R9700 is passed through: the host cannot read it, the VM does.
    for host in ("pve", "monitoring", "dns"):
        with pytest.raises(AssertionError):
            full.upload(host, "/etc/systemd/system/homelab-gpu-metrics.service")


def test_loopback_only_ollama_is_probed_on_its_host_not_from_monitoring(full: Plan) -> None:
    unit = full.upload("ageis-node", "/etc/systemd/system/homelab-local-probe.service")
    assert (
        "ExecStart=/usr/local/sbin/homelab-local-probe --output"
        " /var/lib/prometheus/node-exporter/homelab-local-probe.prom"
        " ollama=http://127.0.0.1:11434/api/version\n"
    ) in unit
    assert "systemctl start homelab-local-probe.timer" in "\n".join(full.commands("ageis-node"))
    config = full.upload("monitoring", PROMETHEUS_YML)
    assert ":11434" not in config and 'service: "ollama"' not in config
    for host in ("pve", "embedder", "monitoring", "dns"):
        with pytest.raises(AssertionError):
            full.upload(host, "/etc/systemd/system/homelab-local-probe.service")


def test_prometheus_size_is_capped_by_the_guests_disk(full: Plan, plan_of) -> None:
    defaults = full.upload("monitoring", "/etc/default/prometheus")
    # The monitoring guest's 32G disk: 60 % of it for samples, beside the 400 days.
    size = int(32 * 1024**3 * 0.6)
    assert (
        f'ARGS="--storage.tsdb.retention.time=400d --storage.tsdb.retention.size={size}B'
    ) in defaults
    chosen = plan_of(
        "deploys/services.py",
        limit=["monitoring"],
        override_data={"prometheus_retention_size": "10G"},
    )
    assert f"--storage.tsdb.retention.size={10 * 1024**3}B" in chosen.upload(
        "monitoring", "/etc/default/prometheus"
    )


def test_the_ssd_fill_alert_watches_the_ssd_pool_and_the_guests_on_it(full: Plan) -> None:
    """From the inventory: pve's ZFS pool of SSDs and NVMe (not the HDD pool) and the root of
    every guest whose disk is on it."""
    rules = full.upload("monitoring", RULES)
    selector = rules.split("and on (instance, mountpoint) (", 1)[1].split(")\n", 1)[0]
    wanted = [("ageis-node", "/"), ("dns", "/"), ("monitoring", "/"), ("pve", "/ssd")]
    assert selector == " or ".join(
        f'node_filesystem_size_bytes{{instance="{i}",mountpoint="{m}"}}' for i, m in wanted
    )
    assert "> 85\n" in rules.split("alert: SsdPoolNearlyFull", 1)[1]


def test_vzdump_collector_on_the_hypervisor_only(full: Plan) -> None:
    assert "pvesh" in full.upload("pve", "/usr/local/sbin/homelab-vzdump-metrics")
    unit = full.upload("pve", "/etc/systemd/system/homelab-vzdump-metrics.service")
    assert "--output /var/lib/prometheus/node-exporter/homelab-vzdump.prom --storage hdd" in unit
    for host in ("ageis-node", "embedder", "monitoring", "dns"):
        with pytest.raises(AssertionError):
            full.upload(host, "/usr/local/sbin/homelab-vzdump-metrics")


def test_every_inventory_host_is_scraped_and_probed(full: Plan) -> None:
    config = full.upload("monitoring", PROMETHEUS_YML)
    node_job = config.split('job_name: "node-exporter"')[1].split("job_name:")[0]
    for host, address in ADDRESSES.items():
        assert (
            f'targets: ["{address}:9100"]\n        labels:\n          instance: "{host}"'
            in node_job
        )
        # Every host's sshd is probed (probe "ssh" declared by the ssh_server task).
        assert re.search(
            rf'targets: \["{address}:22"\]\n\s+labels:\n\s+instance: "{host}"\n\s+service: "ssh"'
            r'\n\s+__param_module: "ssh_banner"',
            config,
        ), host
    assert 'targets: ["192.168.1.50:53"]' in config and '"dns_local"' in config
    # Proxmox VE through the exporter, and the monitoring guest's own services.
    assert 'job_name: "pve"' in config and 'targets: ["192.168.1.10"]' in config
    for job in ("prometheus", "alertmanager", "blackbox-exporter"):
        assert f'job_name: "{job}"' in config
    # The Proxmox exporter answers on loopback only: Prometheus beside it, nobody else.
    assert 'job_name: "pve-exporter"' not in config
    assert 'replacement: "127.0.0.1:9221"' in config
    unit = full.upload("monitoring", "/etc/systemd/system/prometheus-pve-exporter.service")
    assert "--web.listen-address 127.0.0.1:9221" in unit
    # No hand-kept list: nothing outside the inventory's addresses.
    found = set(re.findall(r"192\.168\.1\.\d+", config))
    assert found == set(ADDRESSES.values())


def test_configs_pass_promtool_and_amtool(full: Plan, tmp_path: Path) -> None:
    rules = tmp_path / "homelab.rules.yml"
    rules.write_text(full.upload("monitoring", RULES))
    config = full.upload("monitoring", PROMETHEUS_YML)
    assert "/etc/prometheus/rules/homelab.rules.yml" in config
    prometheus_yml = tmp_path / "prometheus.yml"
    prometheus_yml.write_text(config.replace("/etc/prometheus/rules/homelab.rules.yml", str(rules)))
    result = run("promtool", "check", "config", str(prometheus_yml))
    assert result.returncode == 0, result.stdout + result.stderr
    alertmanager_yml = tmp_path / "alertmanager.yml"
    alertmanager_yml.write_text(full.upload("monitoring", ALERTMANAGER_YML))
    result = run("amtool", "check-config", str(alertmanager_yml))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_config_fails_promtool(tmp_path: Path) -> None:
    bad = tmp_path / "prometheus.yml"
    bad.write_text("scrape_configs:\n  - job_name: x\n    scrape_interval: often\n")
    assert run("promtool", "check", "config", str(bad)).returncode != 0


def test_receivers_and_their_secrets_as_data(plan_of, tmp_path: Path) -> None:
    receivers = [
        {
            "name": "phone",
            "kind": "ntfy",
            "url": "https://ntfy.example/homelab",
            "secret": "ntfy_token",
        },
        {"name": "hook", "kind": "webhook", "url": "http://192.168.1.2:9000/alerts"},
        {
            "name": "mail",
            "kind": "email",
            "to": "ops@example.org",
            "from": "alerts@example.org",
            "smarthost": "mail.example.org:587",
            "username": "alerts",
            "secret": "smtp_password",
        },
    ]
    import os

    os.environ["HOMELAB_SECRET_NTFY_TOKEN"] = "plan-test-double-ntfy"
    os.environ["HOMELAB_SECRET_SMTP_PASSWORD"] = "plan-test-double-smtp"
    try:
        plan = plan_of(
            "deploys/full.py", limit=["monitoring"], override_data={"alert_receivers": receivers}
        )
    finally:
        del os.environ["HOMELAB_SECRET_NTFY_TOKEN"], os.environ["HOMELAB_SECRET_SMTP_PASSWORD"]
    config = plan.upload("monitoring", ALERTMANAGER_YML)
    assert 'url: "https://ntfy.example/homelab?template=alertmanager"' in config
    assert "credentials_file: /etc/prometheus/secrets/ntfy_token" in config
    assert "auth_password_file: /etc/prometheus/secrets/smtp_password" in config
    assert "plan-test-double" not in config
    assert (
        plan.upload("monitoring", "/etc/prometheus/secrets/smtp_password")
        == "plan-test-double-smtp"
    )
    # Secrets travel only as uploaded file content, never in a command line.
    for command in plan.commands("monitoring"):
        if not command.startswith("upload "):
            assert "plan-test-double" not in command
    path = tmp_path / "alertmanager.yml"
    path.write_text(config)
    result = run("amtool", "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Found:\n - global config\n - route\n - 1 inhibit rules\n - 4 receivers" in result.stdout


def test_pve_exporter_token_is_a_root_only_file(full: Plan) -> None:
    pve = full.upload("monitoring", "/etc/prometheus/pve.yml")
    assert 'user: "monitoring@pve"' in pve and 'token_name: "exporter"' in pve
    assert 'token_value: "plan-test-double"' in pve
    assert "prometheus-pve-exporter==3.10.2" in "\n".join(full.commands("monitoring"))


CA_BUNDLE = "/etc/prometheus/pve-api-ca.pem"


def test_the_pve_exporter_verifies_against_the_ca_the_controller_trusts(
    plan_of, pve_double
) -> None:
    plan = plan_of("deploys/services.py", limit=["monitoring"])
    assert plan.upload("monitoring", CA_BUNDLE).strip() == pve_double.ca_file.read_text().strip()


def test_a_ca_not_recorded_yet_leaves_the_exporters_file_and_says_so(
    plan_of, tmp_path: Path, caplog
) -> None:
    import logging

    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        plan = plan_of(
            "deploys/services.py",
            limit=["monitoring"],
            override_data={
                "proxmox_api_ca_file": None,
                "proxmox_api_ca_record_directory": str(tmp_path / "none-yet"),
            },
        )
    assert "the Proxmox API CA of pve is not recorded on this controller yet" in caplog.text
    assert not [n for n in op_names(plan, "monitoring") if "API CAs" in n or "no CA file" in n]


def test_no_verification_asked_removes_the_ca_file(plan_of) -> None:
    plan = plan_of(
        "deploys/services.py",
        limit=["monitoring"],
        override_data={"pve_exporter_verify_tls": False},
    )
    names = op_names(plan, "monitoring")
    assert any("no CA file" in n for n in names) and not any("API CAs" in n for n in names)
