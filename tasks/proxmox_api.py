"""How the deploy reaches the hypervisor's Proxmox VE API (guests, storages, backups, snapshots).

Proxmox allows two ways in: ``root@pam`` with a password (the only way to set a raw
``hostpci0`` address), or an API token (then passthrough goes through a PCI resource mapping).
The secret is the password or the token's secret, per ``proxmox_api_token_name``.
"""

from __future__ import annotations

from tasks.datamodel.forms import Bool, Int, Optional, Str
from tasks.datamodel.keys import Key, Schema
from tasks.datamodel.machine import HYPERVISOR
from tasks.datamodel.secrets import SecretSpec

DATA = Schema(
    "proxmox_api",
    Key(
        "proxmox_api_user",
        Str(r"[^@\s]+@(pam|pve|[a-z0-9-]+)", what='a Proxmox user such as "root@pam"'),
        "root@pam",
        "Proxmox user the deploy logs in as.",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_api_token_name",
        Optional(Str(r"[A-Za-z][A-Za-z0-9._-]*", what='a token ID such as "homelab"')),
        None,
        "API token ID of that user; None logs in with the password instead.",
        (HYPERVISOR,),
    ),
    Key("proxmox_api_port", Int(1, 65535), 8006, "Port of the API.", (HYPERVISOR,)),
    Key(
        "proxmox_api_verify_tls",
        Bool(),
        True,
        "Verify the API's TLS certificate (false only for a self-signed one you accept).",
        (HYPERVISOR,),
    ),
)

SECRETS = (
    SecretSpec(
        "proxmox_api_secret",
        (HYPERVISOR,),
        "the Proxmox password of proxmox_api_user, or the secret of proxmox_api_token_name",
    ),
)
