"""Host hardening beyond SSH and the firewall: sysctls, login defaults, banners, modules, tools.

Reads ``login_umask``, ``legal_banner``, ``disabled_kernel_modules`` and ``hardening_packages``.
Kernel sysctls (``kernel.*``, ``fs.*``) belong to the host kernel: a container (the lab, LXC
guests) cannot set them and systemd-sysctl skips them there; network sysctls are per network
namespace and apply everywhere. needrestart only lists services to restart (restarts, like
reboots, are deliberate here). Process accounting (acct) runs on hosts and VMs, not in
containers, which may not switch the kernel's accounting on.
"""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from tasks.common.datamodel.forms import KERNEL_MODULE, ListOf, Str
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.facts import ContainerVirt
from tasks.common.templating import file_path, template_path

DATA = Schema(
    "hardening",
    Key(
        "login_umask",
        Str(r"0?[0-7]{3}", what='an octal umask such as "027"'),
        "027",
        "Default umask for new files of login users (login.defs).",
    ),
    Key(
        "legal_banner",
        Str(multiline=True, what="text, on one or more lines"),
        (
            "Authorized access only. This is a private system: all activity is monitored and"
            " recorded, and unauthorized use is prohibited and subject to legal action."
        ),
        "Text of /etc/issue and /etc/issue.net.",
    ),
    Key(
        "disabled_kernel_modules",
        ListOf(KERNEL_MODULE, unique=True),
        ["dccp", "sctp", "rds", "tipc", "firewire-core", "usb-storage"],
        "Kernel modules that may never load (unused protocols and buses; drop usb-storage"
        " from the list on a host that needs USB disks).",
    ),
    Key(
        "hardening_packages",
        ListOf(Str(r"[a-z0-9][a-z0-9+.-]+"), unique=True),
        [
            "libpam-tmpdir",
            "libpam-passwdqc",
            "needrestart",
            "debsums",
            "apt-show-versions",
            "apt-listchanges",
            "sysstat",
            "fail2ban",
            "python3-systemd",
            "chkrootkit",
        ],
        "Tools an audited host carries: per-session TMPDIR, password quality, restart hints,"
        " package checksums, activity accounting (sysstat), SSH ban on repeated failures, a"
        " daily rootkit scan (chkrootkit's timer, Debian's settings: differences to the"
        " journal and root's mail).",
    ),
)

LOGIN_DEFS = "/etc/login.defs"


@deploy("Host hardening", data_defaults=DATA.defaults())
def hardening() -> None:
    settings = DATA.read(host)
    apt.packages(
        name="Install hardening tools", packages=settings.hardening_packages, no_recommends=True
    )
    # Process accounting needs the kernel's accounting (CAP_SYS_PACCT): hosts and VMs only.
    if host.get_fact(ContainerVirt) in ("none", ""):
        apt.packages(name="Process accounting", packages=["acct"], no_recommends=True)
        systemd.service(name="Process accounting runs", service="acct", running=True, enabled=True)
    files.put(
        name="needrestart lists, never restarts",
        src=file_path("needrestart-homelab.conf"),
        dest="/etc/needrestart/conf.d/homelab.conf",
        mode="644",
    )
    for path, line, value in (
        ("/etc/default/debsums", "CRON_CHECK", "weekly"),
        ("/etc/default/sysstat", "ENABLED", '"true"'),
    ):
        files.line(
            name=f"{path}: {line}={value}",
            path=path,
            line=rf"^{line}=.*$",
            replace=f"{line}={value}",
        )
    systemd.service(name="sysstat collects", service="sysstat", running=True, enabled=True)
    systemd.service(name="fail2ban watches sshd", service="fail2ban", running=True, enabled=True)
    if "chkrootkit" in settings.hardening_packages:
        systemd.service(
            name="chkrootkit scans daily",
            service="chkrootkit.timer",
            running=True,
            enabled=True,
        )
    sysctl = files.put(
        name="Kernel and network sysctls",
        src=file_path("sysctl-homelab-hardening.conf"),
        dest="/etc/sysctl.d/60-homelab-hardening.conf",
        mode="644",
    )
    # A gated shell rather than systemd.service(restarted=True): that would read the unit's
    # state over SSH on every run, for a oneshot restarted only when the file changed.
    server.shell(
        name="Apply sysctls (read-only ones are skipped in a container)",
        commands=["systemctl restart systemd-sysctl"],
        _if=any_changed(sysctl),
    )
    files.template(
        name="Kernel modules that may never load",
        src=template_path("modprobe-homelab-disabled.conf.j2"),
        dest="/etc/modprobe.d/homelab-disabled.conf",
        mode="644",
        modules=settings.disabled_kernel_modules,
    )
    for name, value in (
        ("UMASK", settings.login_umask),
        ("PASS_MAX_DAYS", "365"),
        ("PASS_MIN_DAYS", "1"),
        ("SHA_CRYPT_MIN_ROUNDS", "500000"),
    ):
        files.line(
            name=f"login.defs: {name} {value}",
            path=LOGIN_DEFS,
            # The setting itself, never the commented examples around it.
            line=rf"^{name}\s+.*$",
            replace=f"{name}\t\t{value}",
        )
    for banner in ("/etc/issue", "/etc/issue.net"):
        files.put(
            name=f"Legal banner in {banner}",
            src=StringIO(settings.legal_banner + "\n"),
            dest=banner,
            mode="644",
        )
