"""Settings for the hypervisor group. Every key, its form and default: docs/data-keys.md."""

# Proxmox API login: root@pam with its password (needed to set a raw hostpci0 address), or set
# proxmox_api_token_name to use an API token (passthrough then goes through a PCI mapping).
# The password or token secret is `proxmox_api_secret` in the secrets file.
proxmox_api_user = "root@pam"
proxmox_api_token_name = None

# The Proxmox web interface and API (pveproxy, port 8006) is declared by
# tasks/hypervisor/proxmox_api.py.
# The hypervisor forwards whatever enters or leaves these bridges (its guests' networks):
# vmbr* are the guest bridges, fwbr* the bridges of Proxmox's per-guest firewall.
firewall_guest_bridges = ["vmbr*", "fwbr*"]

# Proxmox's secure migration streams through SSH tunnels between nodes.
sshd_allow_tcp_forwarding = True

# Data AIDE leaves out besides the pools: Proxmox's "local" storage (ISO images, templates,
# cloud images, backups there).
file_integrity_exclude = ["/var/lib/vz"]

# The hypervisor keeps USB disks usable (an offsite copy of the backups, a restore from one):
# every other host blocks usb-storage.
disabled_kernel_modules = ["dccp", "sctp", "rds", "tipc", "firewire-core"]
