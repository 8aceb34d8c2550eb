"""Settings for the monitoring guest. Every key, its form and default: docs/data-keys.md."""

# Prometheus keeps this much history: thermal and fan trends are read over weeks and seasons.
prometheus_retention_time = "400d"
# How often targets are scraped and rules evaluated.
prometheus_scrape_interval = "30s"
prometheus_evaluation_interval = "30s"

# Where alerts go, besides Alertmanager's own page (http://monitoring:9093). Each receiver may
# name a secret from the secrets file (a bearer token, or the SMTP password), e.g.:
#   alert_receivers = [
#       {"name": "phone", "kind": "ntfy", "url": "https://ntfy.sh/my-homelab-topic"},
#       {"name": "mail", "kind": "email", "to": "ops@example.org",
#        "from": "alerts@example.org", "smarthost": "mail.example.org:587",
#        "username": "alerts", "secret": "alert_smtp_password"},
#   ]
alert_receivers = []

# A host, scrape target or probe down this long alerts.
alert_down_for = "5m"
# Thermals alert when the hourly mean stays above the threshold and rises over days.
alert_cpu_temp_celsius = 80
alert_gpu_temp_celsius = 85
alert_drive_temp_celsius = 50

# The Proxmox VE exporter logs in with a read-only API token (create it on the hypervisor:
#   pveum user add monitoring@pve
#   pveum user token add monitoring@pve exporter --privsep 0
#   pveum acl modify / --users monitoring@pve --roles PVEAuditor
# and put its secret in the secrets file as pve_exporter_token_secret).
pve_exporter_user = "monitoring@pve"
pve_exporter_token_name = "exporter"
# The exporter verifies the API against the CA this controller trusts for each hypervisor
# (proxmox_api_ca_from_host, proxmox_api_ca_file; group data of hypervisor).
pve_exporter_verify_tls = True

# Data AIDE leaves out besides the pools: Prometheus' and Alertmanager's databases.
file_integrity_exclude = ["/var/lib/prometheus"]
