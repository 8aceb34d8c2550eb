"""Lab fixture: the Proxmox API test double, served inside the lab's ``pve`` host on port 8006.

Proxmox VE cannot run in a container, so the lab's hypervisor gets the API test double
(``tests/doubles/pve_api.py``) where pveproxy would listen: ``https://pve:8006/api2/json``.
``labctl up`` (and ``labctl pve-api start``) installs it into the container's root, outside
anything the deploy manages, and starts it as a systemd unit of the container, so it comes
back after a reboot and keeps its state (``/var/lib/homelab-pve-api-double/state.json``)
until ``labctl up --fresh`` recreates the root. Never installed by the deploy.

- TLS: a self-signed certificate for ``pve`` and its lab address, made once per lab in the
  lab's state directory, and written where Proxmox VE keeps its node CA
  (``/etc/pve/pve-root-ca.pem``): the rollout reads it there on first contact and records it
  (``tasks/hypervisor/proxmox_ca.py``), as on a real node.
- Login: ``root@pam`` with the lab secret ``proxmox_api_secret``, and the API token
  ``root@pam!homelab`` with the same secret (for token-mode tests).
- Snapshots of lab hosts are real: the double asks the lab's VM agent (``vm_agent.py``, run by
  labctl on the lab machine) through ``/var/lib/homelab-lab-vm-agent`` in pve's root.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

from tests.doubles.certs import self_signed
from tests.doubles.pve_schema import schema_bytes
from tests.lab import hosts, vm_agent
from tests.lab.hosts import LabHost

PORT = 8006
UNIT = "homelab-pve-api-double.service"
TOKEN = "root@pam!homelab"
SECRET_NAME = "proxmox_api_secret"
CODE_DIR = "opt/homelab-pve-api-double"
CONF_DIR = "etc/homelab-pve-api-double"
TLS_DIR = hosts.STATE_DIR / "pve-api-double"
DOUBLES = Path(__file__).resolve().parents[1] / "doubles"


def ca_file() -> Path:
    """The certificate the lab's controller trusts for pve:8006 (self-signed)."""
    return TLS_DIR / "pve.pem"


def lab_secret() -> str:
    """The lab's ``proxmox_api_secret`` (added to the lab secrets file when missing)."""
    path = hosts.SECRETS_FILE
    have = tomllib.loads(path.read_text()) if path.exists() else {}
    if have.get(SECRET_NAME):
        return str(have[SECRET_NAME])
    value = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(f'{SECRET_NAME} = "{value}"\n')
    path.chmod(0o600)
    return value


def _write(root: Path, relative: str, content: str | bytes, mode: int) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    path.chmod(mode)


def install(host: LabHost) -> None:
    """Put the double, its schema, certificate, credentials and unit into ``host``'s root."""
    root = host.root_dir
    cert, key = self_signed(TLS_DIR, "pve", [host.address])
    for name in ("pve_api.py", "pve_schema.py"):
        _write(root, f"{CODE_DIR}/{name}", (DOUBLES / name).read_text(), 0o644)
    for version in (8, 9):
        _write(root, f"{CODE_DIR}/apidata-v{version}.json", schema_bytes(version), 0o644)
    secret = lab_secret()
    _write(root, f"{CONF_DIR}/pve.pem", cert.read_text(), 0o644)
    # Self-signed, so the certificate is its own CA; pmxcfs shows it as root:www-data 0640.
    _write(root, "etc/pve/pve-root-ca.pem", cert.read_text(), 0o640)
    _write(root, f"{CONF_DIR}/pve.key", key.read_text(), 0o600)
    _write(root, f"{CONF_DIR}/password", secret + "\n", 0o600)
    _write(root, f"{CONF_DIR}/tokens", f"{TOKEN}={secret}\n", 0o600)
    # Proxmox's CLI as test doubles that call this double (tests/doubles/bin), where a node
    # has them: the host-side scripts (UPS shutdown, vzdump metrics) reach it through them.
    for name, dest in (("pvesh", "usr/bin/pvesh"), ("pct", "usr/sbin/pct")):
        _write(root, dest, (DOUBLES / "bin" / name).read_text(), 0o755)
    _write(
        root,
        f"{CONF_DIR}/pvesh.conf",
        f"url=https://{host.address}:{PORT}\ntoken={TOKEN}={secret}\nca=/{CONF_DIR}/pve.pem\n",
        0o600,
    )
    conf = f"/{CONF_DIR}"
    _write(
        root,
        f"etc/systemd/system/{UNIT}",
        "[Unit]\n"
        "Description=Proxmox VE API test double (lab only, tests/lab/pve_api_double.py)\n"
        "After=network-online.target\nWants=network-online.target\n\n"
        "[Service]\n"
        f"ExecStart=/usr/bin/python3 /{CODE_DIR}/pve_api.py --bind 0.0.0.0 --port {PORT}"
        f" --cert {conf}/pve.pem --key {conf}/pve.key --node {host.name}"
        f" --address {host.address} --password-file {conf}/password"
        f" --token-file {conf}/tokens"
        " --state-file /var/lib/homelab-pve-api-double/state.json"
        f" --lab-vm-agent {vm_agent.EXCHANGE_INSIDE}\n"
        "StateDirectory=homelab-pve-api-double\n"
        "Restart=on-failure\n\n"
        "[Install]\nWantedBy=multi-user.target\n",
        0o644,
    )
    # The lab's VM agent (labctl, on the lab machine) reads and writes here: real snapshots.
    (root / vm_agent.EXCHANGE_INSIDE.lstrip("/")).mkdir(mode=0o700, parents=True, exist_ok=True)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / UNIT
    if not link.is_symlink():
        link.symlink_to(f"/etc/systemd/system/{UNIT}")


def answers(host: LabHost, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host.address, PORT), timeout=timeout):
            return True
    except OSError:
        return False


def start(host: LabHost, nsenter: Callable[..., subprocess.CompletedProcess[str]]) -> float:
    """(Re)start the double in the running ``host``; seconds until it answered on 8006."""
    started = time.monotonic()
    install(host)
    for command in (("systemctl", "daemon-reload"), ("systemctl", "restart", UNIT)):
        result = nsenter(host, *command)
        if result.returncode != 0:
            raise RuntimeError(f"{host.name}: {' '.join(command)} failed: {result.stderr}")
    deadline = time.monotonic() + 20
    while not answers(host):
        if time.monotonic() > deadline:
            log = nsenter(host, "journalctl", "-u", UNIT, "-n", "30", "--no-pager")
            raise RuntimeError(f"{host.name}: the API double does not answer:\n{log.stdout}")
        time.sleep(0.2)
    return time.monotonic() - started


def stop(host: LabHost, nsenter: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    nsenter(host, "systemctl", "stop", UNIT)


def reset(host: LabHost, nsenter: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """Forget everything the double holds (guests, storages, jobs) and start it again."""
    stop(host, nsenter)
    shutil.rmtree(host.root_dir / "var/lib/homelab-pve-api-double", ignore_errors=True)
    start(host, nsenter)
