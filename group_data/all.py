"""Settings for every host. Every key, its form and default: README, "Data keys"."""

# --- Connection (pyinfra's own keys) ---
# First rollout: a user that can sudo (or root, as on a fresh Proxmox host).
ssh_user = "root"
# Private key pyinfra logs in with (a path on this controller; never commit it).
ssh_key = "~/.ssh/id_ed25519"

# --- Network ---
# Your LAN; every host's lan_address must lie inside it.
lan_cidr = "192.168.1.0/24"
# Local DNS domain: hosts are <name>.home.arpa (RFC 8375's special-use domain for homes).
domain = "home.arpa"

# --- Base ---
# IANA time zone of every host.
timezone = "Etc/UTC"
# NTP servers for chrony; [] keeps the distribution's default pool.
ntp_servers = []
# The admin login created on every host, its group (SSH and sudo) and its public keys.
admin_user = "ops"
admin_group = "homelab-admins"
admin_ssh_public_key_files = ["~/.ssh/id_ed25519.pub"]
# Journal cap: persistent logs, never more than this on disk.
journald_max_use = "1G"
