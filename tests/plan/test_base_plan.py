"""Plans of the base tasks on the real machines' facts (no network, no hosts)."""

from __future__ import annotations

import pytest

from tests.plan.harness import Plan

HOSTS = ("pve", "ageis-node", "embedder", "monitoring", "dns")


def test_every_host_gets_every_base_task(full: Plan) -> None:
    for name in HOSTS:
        names = " ".join(op.name for op in full.for_host(name))
        for task in (
            "Security updates",
            "Host name",
            "Base packages",
            "Time zone",
            "Persistent journal",
            "Admin user",
            "SSH server",
        ):
            assert task in names, f"{name} lacks {task}"


def test_hosts_file_lists_every_inventory_host_with_its_lan_address(full: Plan) -> None:
    upload = full.op("embedder", "Write /etc/hosts").commands[0]
    assert "192.168.1.10\tpve.home.arpa\tpve" in upload
    assert "192.168.1.20\tageis-node.home.arpa\tageis-node" in upload
    assert "192.168.1.30\tembedder.home.arpa\tembedder" in upload
    # Proxmox needs its own name on the LAN address, not 127.0.1.1.
    assert "127.0.1.1" not in upload


def test_fresh_debian_installer_host_is_renamed(full: Plan) -> None:
    assert full.op("embedder", "Set the host name").commands == [
        "hostnamectl set-hostname embedder"
    ]
    assert full.op("pve", "Set the host name").commands == []


def test_time_zone_changes_only_where_it_differs(full: Plan) -> None:
    assert full.op("pve", "Set the time zone").commands == ["timedatectl set-timezone Etc/UTC"]
    assert full.op("ageis-node", "Set the time zone").commands == []


def test_chrony_runs_on_machines_but_is_only_enabled_in_containers(full: Plan) -> None:
    assert "systemctl start chrony.service" in full.op("embedder", "Enable chrony").commands
    lxc = full.op("dns", "Enable chrony").commands
    assert "systemctl enable chrony.service" in lxc
    assert not any("start" in command for command in lxc)


def test_package_lists_refresh_only_when_stale(full: Plan, plan_of, fleet) -> None:
    assert full.op("pve", "Refresh package lists").commands[0] == "apt-get update"
    fleet["pve"].apt_updated_seconds_ago = 600
    fresh = plan_of("deploys/full.py")
    assert fresh.op("pve", "Refresh package lists").commands == []


def test_admin_user_gets_only_the_controllers_key(full: Plan, controller_home) -> None:
    key = (controller_home / ".ssh" / "id_ed25519.pub").read_text().strip()
    upload = [c for c in full.op("ageis-node", "Admin SSH keys").commands if c.startswith("upload")]
    assert upload == [f"upload /home/ops/.ssh/authorized_keys\n{key}\n"]
    assert (
        "useradd -d /home/ops -s /bin/bash -G homelab-admins -m ops"
        in full.op("ageis-node", "Admin user ops").commands
    )


def test_sudoers_and_sshd_go_live_only_through_their_checks(full: Plan) -> None:
    sudo = full.op("embedder", "Sudo for the admin group (checked").commands[0]
    assert "visudo -cf {}" in sudo and sudo.endswith("'") is False
    sshd = full.op("embedder", "Key-only SSH login, modern algorithms (checked").commands[0]
    assert "sshd -t -f" in sshd
    staged = full.op("embedder", "Key-only SSH login, modern algorithms (staged)").commands
    content = next(c for c in staged if c.startswith("upload"))
    assert "PasswordAuthentication no" in content
    assert "KbdInteractiveAuthentication no" in content
    # Who may log in is the login drop-in's, written last (below).
    assert "PermitRootLogin" not in content and "AllowGroups" not in content
    reload_op = full.op("embedder", "Reload sshd")
    assert reload_op.conditional and reload_op.commands == ["systemctl reload ssh.service"]


def test_journal_is_persistent_and_capped(full: Plan) -> None:
    cap = full.op("embedder", "Journal size cap").commands
    content = next(c for c in cap if c.startswith("upload"))
    assert "Storage=persistent" in content and "SystemMaxUse=1024M" in content


def test_mirror_is_left_alone_unless_data_names_one(full: Plan) -> None:
    # The distribution's own sources; vendor repositories (Tailscale) add files of their own.
    # The embedder's NVIDIA driver adds components (contrib, non-free) to its Components:
    # lines, in place: the mirror stays.
    for name in HOSTS:
        for distribution in ("debian", "ubuntu"):
            dest = f"sources.list.d/{distribution}.sources"
            touching = [c for c in full.commands(name) if dest in c]
            components_only = [c for c in touching if c.startswith("sed -E -i '/^Components:/{")]
            assert touching == (components_only if name == "embedder" else [])


@pytest.mark.parametrize(
    "deploy, touched",
    [
        ("deploys/hypervisor.py", {"pve"}),
        ("deploys/ageis_node.py", {"ageis-node"}),
        ("deploys/embedder.py", {"embedder"}),
        ("deploys/services.py", {"monitoring", "dns"}),
    ],
)
def test_role_deploys_touch_only_their_hosts(plan_of, deploy: str, touched: set[str]) -> None:
    result = plan_of(deploy)
    changed = {name for name in HOSTS if any(op.changes for op in result.for_host(name))}
    assert changed == touched


def _sshd_drop_in(plan: Plan, name: str) -> str:
    staged = plan.op(name, "Key-only SSH login, modern algorithms (staged)").commands
    return next(c for c in staged if c.startswith("upload"))


def test_sshd_algorithms_follow_each_hosts_openssh(full: Plan) -> None:
    debian = _sshd_drop_in(full, "embedder")  # Debian 13: OpenSSH 10.0
    ubuntu = _sshd_drop_in(full, "ageis-node")  # Ubuntu 24.04: OpenSSH 9.6
    assert "KexAlgorithms mlkem768x25519-sha256,sntrup761x25519-sha512@openssh.com," in debian
    assert "KexAlgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256," in ubuntu
    for content in (debian, ubuntu):
        assert "nistp" not in content and "sha1" not in content
        assert "HostKey /etc/ssh/ssh_host_ecdsa_key" not in content


PROOF = "Admin login proven: ops by SSH key, with sudo"


def _login_drop_in(plan: Plan, name: str, root: str = "no") -> str:
    staged = plan.op(name, f"SSH login: the admin group, root {root} (staged)").commands
    return next(c for c in staged if c.startswith("upload"))


def test_root_login_goes_off_last_once_the_admin_login_is_proven(full: Plan) -> None:
    # First contact (no login record): root on the installed hosts and the LXC guests.
    for name in ("pve", "embedder", "monitoring", "dns"):
        names = [op.name for op in full.for_host(name)]
        proof = next(i for i, op in enumerate(names) if PROOF in op)
        login = next(i for i, op in enumerate(names) if "root no (checked, installed)" in op)
        assert proof < login, f"{name}: root login would go off before the proof"
        # Nothing after it but the reload: every reboot of the run reconnects as root first.
        assert [op for op in names[login + 1 :] if "Reload sshd for who" not in op] == [], name
        content = _login_drop_in(full, name)
        assert "PermitRootLogin no\nAllowGroups homelab-admins\n" in content
        installed = full.op(name, "root no (checked, installed)").commands[0]
        assert "/etc/ssh/sshd_config.d/05-homelab-login.conf" in installed
    # The VM is reached as the admin user cloud-init made: nothing to prove, only to record.
    assert not any(PROOF in op.name for op in full.for_host("ageis-node"))
    recorded = "Admin login recorded: ops (this run logged in with it)"
    assert [op.name for op in full.for_host("ageis-node") if recorded in op.name]
    assert "PermitRootLogin no" in _login_drop_in(full, "ageis-node")


def test_a_host_reached_as_the_admin_proves_nothing(plan_of) -> None:
    result = plan_of("deploys/full.py", override_data={"ssh_user": "ops", "_sudo": True})
    for name in HOSTS:
        assert not any(PROOF in op.name for op in result.for_host(name)), name


def test_root_login_by_key_where_the_data_keeps_it(plan_of) -> None:
    result = plan_of(
        "deploys/hypervisor.py", override_data={"sshd_permit_root_login": "prohibit-password"}
    )
    content = _login_drop_in(result, "pve", "prohibit-password")
    assert "PermitRootLogin prohibit-password\nAllowGroups homelab-admins root\n" in content


def test_sshd_port_forwarding_on_the_hypervisor_only(full: Plan) -> None:
    content = _sshd_drop_in(full, "pve")
    # Proxmox migrations tunnel through SSH: forwarding on the hypervisor only.
    assert "AllowTcpForwarding yes" in content
    assert "AllowTcpForwarding no" in _sshd_drop_in(full, "embedder")


def test_security_updates_only_from_the_security_archive_without_reboots(full: Plan) -> None:
    for name in ("pve", "ageis-node"):
        ops = full.op(name, "Security archive only").commands
        content = next(c for c in ops if c.startswith("upload"))
        assert "#clear Unattended-Upgrade::Origins-Pattern;" in content
        assert 'codename=${distro_codename}-security,label=Debian-Security"' in content
        assert 'Unattended-Upgrade::Automatic-Reboot "false";' in content
        assert "Unattended-Upgrade::Mail " not in content  # no address in the data: no mail


def test_waiting_security_updates_are_applied_on_rollout(plan_of, fleet) -> None:
    # Fresh hosts (no unattended-upgrades yet, stale lists): applied after the refresh.
    first = plan_of("deploys/full.py")
    assert first.op("embedder", "Apply waiting security updates").commands == ["unattended-upgrade"]
    # A converged host: fresh lists, nothing waiting -> nothing to do.
    converged = fleet["pve"]
    converged.unattended_upgrades_pending = []
    converged.apt_updated_seconds_ago = 600
    assert not any(
        "Apply waiting security updates" in op.name
        for op in plan_of("deploys/full.py").for_host("pve")
    )
    # Fresh lists, but the dry run lists work: applied.
    converged.unattended_upgrades_pending = ["openssl", "libssl3t64"]
    assert plan_of("deploys/full.py").op("pve", "Apply waiting security updates").commands == [
        "unattended-upgrade"
    ]


def test_process_accounting_on_machines_not_in_containers(full: Plan) -> None:
    names = [op.name for op in full.for_host("embedder")]
    assert "Host hardening | Process accounting" in names
    assert not any("Process accounting" in op.name for op in full.for_host("dns"))


def _first(plan: Plan, name: str, text: str) -> int:
    """Position of the first operation on ``name`` whose commands contain ``text``."""
    ops = plan.for_host(name)
    found = [i for i, op in enumerate(ops) if any(text in c for c in op.commands)]
    assert found, f"{name}: no operation runs {text!r}"
    return found[0]


def test_a_cloud_init_vm_is_waited_for_before_apt_then_handed_over(full: Plan) -> None:
    """The Ubuntu cloud-image VM: cloud-init's first boot finishes before the rollout's first
    apt command, and cloud-init is kept from running again (it would rewrite /etc/hosts and the
    pinned SSH host keys when Proxmox gives the VM a new instance id)."""
    handover = _first(full, "ageis-node", "cloud-init status --wait")
    command = full.for_host("ageis-node")[handover].commands[0]
    assert command.endswith("touch /etc/cloud/cloud-init.disabled")
    assert "$status -ne 2" in command, "done with recoverable errors goes on"
    assert handover < _first(full, "ageis-node", "apt-get")
    for name in ("pve", "embedder", "monitoring", "dns"):  # no cloud-init installed
        assert not [op for op in full.for_host(name) if "cloud-init" in " ".join(op.commands)]


def test_a_handed_over_vm_gets_no_cloud_init_operation(plan_of, fleet) -> None:
    fleet["ageis-node"].cloud_init = "disabled"
    plan = plan_of("deploys/full.py")
    assert not [op for op in plan.for_host("ageis-node") if "cloud-init" in op.name.lower()]


def test_proxmox_leaves_the_hosts_file_of_lxc_guests_alone(full: Plan) -> None:
    for name in ("monitoring", "dns"):
        assert full.op(name, "Proxmox VE leaves this guest's /etc/hosts alone").commands == [
            "touch /etc/.pve-ignore.hosts",
            "chmod 644 /etc/.pve-ignore.hosts",
        ]
    for name in ("pve", "ageis-node", "embedder"):
        commands = " ".join(c for op in full.for_host(name) for c in op.commands)
        assert ".pve-ignore.hosts" not in commands, name


def test_the_vm_gets_the_qemu_guest_agent_that_its_config_enables(full: Plan) -> None:
    for name in ("pve", "ageis-node", "embedder", "monitoring", "dns"):
        install = " ".join(full.op(name, "Install base packages").commands)
        assert ("qemu-guest-agent" in install) == (name == "ageis-node"), (name, install)


def test_file_integrity_leaves_the_pools_out_and_builds_in_the_background(plan_of) -> None:
    from tasks.base.file_integrity import aide_pattern, excluded

    result = plan_of("deploys/full.py", limit=["pve", "dns"])
    conf = result.upload("pve", "/etc/aide/aide.conf.d/99_homelab_data")
    rules = [line for line in conf.splitlines() if line and not line.startswith("#")]
    # The pools, and group_data's Proxmox "local" storage.
    assert rules == [r"!/mnt/hdd(/|$)", r"!/ssd(/|$)", r"!/var/lib/vz(/|$)"], rules
    # A host without pools gets an empty exclusion list: AIDE's own rules only.
    dns = result.upload("dns", "/etc/aide/aide.conf.d/99_homelab_data")
    assert [line for line in dns.splitlines() if line and not line.startswith("#")] == []
    unit = result.upload("pve", "/etc/systemd/system/homelab-aide-init.service")
    assert "CPUSchedulingPolicy=idle" in unit and "IOSchedulingClass=idle" in unit
    assert "ExecStart=/usr/sbin/aideinit --yes --force" in unit
    assert "ConditionPathExists=!/var/lib/aide/aide.db" in unit  # only while there is none
    timer = result.upload("pve", "/etc/systemd/system/homelab-aide-init.timer")
    assert "OnCalendar=*-*-* 00:30:00" in timer  # a quiet hour, before the daily check
    # Debian's daily check exits 1 without a database: skipped until there is one.
    check = result.upload("pve", "/etc/systemd/system/dailyaidecheck.service.d/homelab.conf")
    settings = [line for line in check.splitlines() if line and not line.startswith("#")]
    assert settings == ["[Unit]", "ConditionPathExists=/var/lib/aide/aide.db"], settings
    commands = "\n".join(result.commands("pve"))
    assert "systemctl start homelab-aide-init.timer" in commands
    assert "systemctl start dailyaidecheck.timer" in commands
    # The run never scans: it only drops a database the new settings made stale.
    outside_units = [c for c in result.commands("pve") if not c.startswith("upload ")]
    assert not [c for c in outside_units if "aideinit" in c or "aide --init" in c]
    assert "systemctl start homelab-aide-init.service" not in commands
    drop = result.op("pve", "New AIDE settings: the old database goes")
    assert drop.commands == ["rm -f /var/lib/aide/aide.db"] and drop.conditional
    checksums = result.op("pve", "AIDE checksums").commands
    assert any("Checksums = sha512" in c for c in checksums), checksums
    assert "systemctl start chkrootkit.timer" in "\n".join(result.commands("pve"))
    assert excluded(["/srv/ssd/", "/srv/ssd", "/"], ["/var/lib/x"]) == ["/srv/ssd", "/var/lib/x"]
    assert aide_pattern("/srv/a.b+c") == r"!/srv/a\.b\+c(/|$)"


def test_sensor_chip_drivers_load_where_the_hardware_is_the_hosts_own(plan_of, fleet) -> None:
    fleet["pve"].sensor_drivers = ["coretemp", "nct6775"]
    result = plan_of("deploys/full.py", limit=["pve", "ageis-node", "dns"])
    conf = result.upload("pve", "/etc/modules-load.d/homelab-sensors.conf")
    assert [line for line in conf.splitlines() if line and not line.startswith("#")] == [
        "coretemp",
        "nct6775",
    ]
    load = result.op("pve", "Load the sensor chip drivers now")
    assert load.commands == ["modprobe coretemp", "modprobe nct6775"] and load.conditional
    # A VM and a container read no hardware sensors of their own.
    for name in ("ageis-node", "dns"):
        with pytest.raises(AssertionError):
            result.upload(name, "/etc/modules-load.d/homelab-sensors.conf")
    chosen = plan_of(
        "deploys/hypervisor.py", limit=["pve"], override_data={"sensor_modules": ["it87"]}
    )
    conf = chosen.upload("pve", "/etc/modules-load.d/homelab-sensors.conf")
    assert [line for line in conf.splitlines() if line and not line.startswith("#")] == ["it87"]


def test_usb_disks_work_on_the_hypervisor_only(plan_of) -> None:
    result = plan_of("deploys/full.py", limit=["pve", "dns"])
    pve = result.upload("pve", "/etc/modprobe.d/homelab-disabled.conf")
    dns = result.upload("dns", "/etc/modprobe.d/homelab-disabled.conf")
    assert "usb-storage" not in pve and "install dccp /bin/false" in pve
    assert "install usb-storage /bin/false" in dns
