"""Settings for every host. Every key, its form and default: docs/data-keys.md."""

# --- Connection (pyinfra's own keys) ---
# Who pyinfra logs in as is chosen per host as the inventory loads (tasks/common/logins.py):
# the admin user with sudo once a run has proven that login (recorded on this controller in
# login_record_directory), else first_login_user: root on a fresh install and a new LXC guest,
# the admin user on the VM (cloud-init creates it). Setting ssh_user here overrides the choice.
first_login_user = None
login_record_directory = "~/.local/state/homelab-as-code/logins"
# Private key pyinfra logs in with (a path on this controller; never commit it).
ssh_key = "~/.ssh/id_ed25519"
# Host keys: the first contact records each host's key here, every later run must meet the same
# key, or the whole run stops before any change, naming both fingerprints. Pin a key you read at
# a host's console with host_key_fingerprint (host data, "SHA256:...").
ssh_known_hosts_file = "~/.ssh/known_hosts"
ssh_strict_host_key_checking = "accept-new"

# --- Network ---
# Your LAN; every host's lan_address must lie inside it.
lan_cidr = "192.168.1.0/24"
# Local DNS domain: hosts are <name>.home.arpa (RFC 8375's special-use domain for homes).
domain = "home.arpa"
# Every host resolves through the dns group's unbound first, then these fallbacks (IPv4), so a
# dead resolver never stops a rollout. None keeps the resolvers each host uses now (usually
# your router) as its fallbacks; [] means no fallback.
dns_fallback_servers = None

# --- Firewall (nftables, every host) ---
# Each declared port (the tasks' own) is open only to its consumers: SSH and the Proxmox UI to
# the admin's devices, PostgreSQL to the embedder, the embedding server and TTS to ageis-node,
# exporters to the monitoring guest, Prometheus, Alertmanager and the OpenClaw gateway to the
# tailnet; docs/security.md has the whole table. The rest of what arrives unasked is dropped.
# Networks of the admin's devices (v4 or v6 CIDRs); None: the whole LAN. The tailnet is always
# an admin source. E.g. firewall_admin_sources = ["192.168.1.64/28", "fd00:1::/64"]
firewall_admin_sources = None
# A service you add by hand: its port here (consumers default to ["admin"]), e.g.
#   firewall_extra_ports = [{"port": 5201, "proto": "tcp", "service": "iperf3",
#                            "consumers": ["admin", "embedder"]}]
firewall_extra_ports = []
# Raw nft rules appended to the input chain (checked with nft -c before they go live), e.g.
#   firewall_extra_rules = ["ip saddr 192.168.1.5 tcp dport 5201 accept"]
firewall_extra_rules = []
# Ping and ICMP errors accepted per protocol (IPv4, IPv6), above a burst of firewall_icmp_burst.
firewall_icmp_rate = "10/second"
# The interface Tailscale creates; admin and tailnet ports are open on it.
tailnet_interface = "tailscale0"

# --- Tailscale (the nodes: hypervisor, ageis-node, embedder; not the service guests) ---
# Release track of Tailscale's signed apt repository, and an optional exact version pin.
tailscale_track = "stable"
tailscale_version = None
# Tags the nodes advertise at login (the auth key, secret tailscale_auth_key, must allow them).
tailscale_tags = []
# Tailscale SSH, the tailnet's DNS settings, other nodes' subnet routes: off keeps OpenSSH and
# the LAN's own resolver in charge.
tailscale_ssh = False
tailscale_accept_dns = False
tailscale_accept_routes = False

# --- Base ---
# IANA time zone of every host.
timezone = "Etc/UTC"
# NTP servers for chrony; [] keeps the distribution's default pool.
ntp_servers = []
# The admin login created on every host, its group (SSH and sudo) and its public keys. Root SSH
# login goes off at the end of the run that proves the admin login; a Proxmox cluster's nodes
# need it by key: sshd_permit_root_login = "prohibit-password".
admin_user = "ops"
admin_group = "homelab-admins"
admin_ssh_public_key_files = ["~/.ssh/id_ed25519.pub"]
# Journal cap: persistent logs, never more than this on disk.
journald_max_use = "1G"
