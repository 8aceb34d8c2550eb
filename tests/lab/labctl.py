#!/usr/bin/env python3
"""Lab controller: boot the lab's Debian 13 hosts as systemd-nspawn containers on a private bridge.

Run from the repository root as ``python3 -m tests.lab.labctl COMMAND`` or
``python3 tests/lab/labctl.py COMMAND`` (as root). Standard library only: it runs before, and
independently of, the project's virtual environment. ``hosts.py`` describes the lab.

Commands::

    deps                  install the missing host packages (apt-get)
    image [--rebuild]     build (or reuse) the cached debootstrap Debian 13 root
    up [--fresh] [HOST...]  network, apt proxy, stand-in Tailscale repository, roots, boot;
                          wait for SSH and a running systemd
    guests [HYPERVISOR]   boot the guests the rollout created through the API double, each
                          prepared as Proxmox prepares it (tests/lab/proxmox_prep.py), in
                          their startup order
    down                  power every host off, tear the network down, check nothing is left
    destroy               down, then delete the lab state (roots, pools); the cache stays
    status                one line per host
    ssh HOST [CMD...]     ssh into a host with the lab key as its login; CMD runs as root
    kill HOST             pull the plug (SIGKILL the container's init, no shutdown)
    start HOST            start a stopped host; return once SSH answers
    wait HOST             wait for SSH and ``systemctl is-system-running`` = running
    reboot HOST           clean reboot from inside; return once SSH answers again

Each container runs under a small supervisor (``labctl.py _supervise HOST``, detached, logging to
``STATE_DIR/logs/HOST.log``) that restarts systemd-nspawn when the container reboots (exit status
133) and stops on any other exit, so a pulled plug stays down until ``start``.

The VM agent (``labctl.py _vm-agent``, ``vm_agent.py``; detached, pid file ``RUN_DIR/vm-agent.pid``,
log ``STATE_DIR/logs/vm-agent.log``) makes the API double's snapshots of lab hosts real: started
by ``up`` and ``guests``, stopped by ``down``; its copies live in ``STATE_DIR/snapshots``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TypeVar

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tasks.common import logins
from tasks.hypervisor import proxmox_ca
from tests.lab import (
    hosts,
    inference_standin,
    lab_ups,
    proxmox_prep,
    pve_api_double,
    standin_repo,
    vm_agent,
    wheelhouse,
)
from tests.lab.hosts import LabHost

# --- what the lab is made of ---------------------------------------------------------------

SUITE = "trixie"
VARIANT = "minbase"
INCLUDE = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "sudo",
    "iproute2",
    "ca-certificates",
    "python3",
    "udev",
    "libpam-systemd",
)
# Bump when the image's post-processing changes, so cached images are rebuilt.
IMAGE_RECIPE = 2

HOST_PACKAGES = (
    "systemd-container",
    "debootstrap",
    "nftables",
    "iproute2",
    "apt-cacher-ng",
    "openssh-client",
    # The stand-in Tailscale repository (standin_repo.py): its test key, package and indexes.
    "gnupg",
    "apt-utils",
    # DNS tests (test_dns.py): ldns-signzone for the DNSSEC stand-in zones, drill and ping
    # from outside the LAN.
    "ldnsutils",
    "iputils-ping",
    # The exposure test (test_exposure.py) scans every lab host's TCP ports.
    "nmap",
    # The VM agent (vm_agent.py) copies guests' roots for the API double's snapshots.
    "rsync",
)

NFT_FAMILY = "ip"
NFT_TABLE = f"homelab_lab{hosts.LAB_ID or ''}"
REBOOT_EXIT_STATUS = 133  # systemd-nspawn's exit status when the container rebooted

IMAGES_DIR = hosts.CACHE_DIR / "images"
APT_CACHE_DIR = hosts.CACHE_DIR / f"apt-cacher-ng{hosts.SUFFIX}"
LOG_DIR = hosts.STATE_DIR / "logs"
RUN_DIR = hosts.STATE_DIR / "run"
ACNG_CONF_DIR = hosts.STATE_DIR / "apt-cacher-ng"
ACNG_LOG_DIR = LOG_DIR / "apt-cacher-ng"
ACNG_PID_FILE = RUN_DIR / "apt-cacher-ng.pid"
VM_AGENT_PID_FILE = RUN_DIR / "vm-agent.pid"
VM_AGENT_LOG = LOG_DIR / "vm-agent.log"
SNAPSHOTS_DIR = hosts.STATE_DIR / "snapshots"  # the VM agent's copies, one directory a host
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
IP_FORWARD_SAVED = RUN_DIR / "ip_forward.saved"
APT_PROXY_CONF = "etc/apt/apt.conf.d/01homelab-lab-proxy"

SSH_TIMEOUT = 120.0  # seconds a host gets to answer on SSH after its container started
RUNNING_TIMEOUT = 180.0  # seconds for `systemctl is-system-running --wait`
POWEROFF_TIMEOUT = 20.0  # seconds a clean poweroff gets before the plug is pulled
LOG_ROTATE_BYTES = 4 << 20  # a container log this big is moved to NAME.log.1 at the next start

T = TypeVar("T")

# --- output --------------------------------------------------------------------------------

_START = time.monotonic()
_PRINT_LOCK = threading.Lock()


class LabError(Exception):
    """A failure to report to the user (without a traceback)."""


def elapsed() -> float:
    return time.monotonic() - _START


def say(message: str) -> None:
    """Print a progress line with the time since the command started."""
    with _PRINT_LOCK:
        print(f"[{elapsed():6.1f}s] {message}", flush=True)


def warn(message: str) -> None:
    with _PRINT_LOCK:
        print(f"[{elapsed():6.1f}s] WARNING: {message}", file=sys.stderr, flush=True)


def tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = None,
    input_text: str | None = None,
    env: dict[str, str] | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; on failure raise a LabError that shows it."""
    try:
        result = subprocess.run(
            list(cmd),
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            env=env,
        )
    except FileNotFoundError as exc:
        raise LabError(f"{what or cmd[0]}: {cmd[0]} is not installed (run `labctl deps`)") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{what or ' '.join(cmd)}: timed out after {timeout:.0f}s") from exc
    if check and result.returncode != 0:
        output = tail(result.stderr + result.stdout)
        raise LabError(
            f"{what or 'command'} failed (exit {result.returncode}): {' '.join(cmd)}\n{output}"
        )
    return result


def in_parallel(items: Sequence[T], action: Callable[[T], None], label: Callable[[T], str]) -> None:
    """Run ``action`` on every item in threads; raise one LabError naming every failure."""
    if not items:
        return
    errors: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = {pool.submit(action, item): item for item in items}
        for future in concurrent.futures.as_completed(futures):
            exc = future.exception()
            if exc is None:
                continue
            if isinstance(exc, LabError):
                errors.append(str(exc))
            else:
                errors.append(f"{label(futures[future])}: {type(exc).__name__}: {exc}")
    if errors:
        raise LabError("\n".join(errors))


# --- processes -----------------------------------------------------------------------------


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        found.extend(int(child) for child in text.split())
    return found


def nspawn_processes() -> dict[str, int]:
    """Running systemd-nspawn processes of this lab: machine name -> pid."""
    found: dict[str, int] = {}
    machines = str(hosts.MACHINES_DIR) + "/"
    for pid in all_pids():
        argv = proc_cmdline(pid)
        if not argv or os.path.basename(argv[0]) != "systemd-nspawn" or not alive(pid):
            continue
        if not any(machines in arg for arg in argv):
            continue
        for arg in argv:
            if arg.startswith("--machine="):
                found[arg.split("=", 1)[1].removesuffix(hosts.SUFFIX)] = pid
    return found


def nspawn_pid(host: LabHost) -> int | None:
    return nspawn_processes().get(host.name)


def container_init(nspawn: int) -> int | None:
    """The container's PID 1 as seen from the host: the child of the systemd-nspawn process."""
    kids = [kid for kid in children(nspawn) if alive(kid)]
    return kids[0] if kids else None


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def read_pid(path: Path, must_contain: str) -> int | None:
    """The pid in ``path`` if that process is alive and its command line has ``must_contain``."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    argv = proc_cmdline(pid)
    if argv and alive(pid) and any(must_contain in arg for arg in argv):
        return pid
    return None


def daemonize(argv: Sequence[str], log_path: Path) -> int:
    """Start ``argv`` detached (own session, stdin /dev/null, output appended to ``log_path``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    return proc.pid


@contextmanager
def lab_lock() -> Iterator[None]:
    """Serialize the commands that change the lab."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / "labctl.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another labctl command is changing the lab; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- host packages -------------------------------------------------------------------------


def missing_packages() -> list[str]:
    result = run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *HOST_PACKAGES], check=False
    )
    installed = {
        line.split()[0]
        for line in result.stdout.splitlines()
        if len(line.split()) == 2 and line.split()[1] == "installed"
    }
    return [package for package in HOST_PACKAGES if package not in installed]


def ensure_deps() -> None:
    missing = missing_packages()
    if not missing:
        say("host packages: all installed")
        return
    if os.geteuid() != 0:
        raise LabError(f"host packages missing ({', '.join(missing)}) and labctl is not root")
    say(f"host packages: installing {', '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update"], env=env, what="apt-get update", timeout=600)
    run(
        ["apt-get", "install", "-y", "--no-install-recommends", *missing],
        env=env,
        what="apt-get install",
        timeout=1200,
    )
    still = missing_packages()
    if still:
        raise LabError(f"host packages still missing after apt-get install: {', '.join(still)}")
    say("host packages: installed")


# --- mirror, resolver ----------------------------------------------------------------------


def _debian_uri(uri: str) -> bool:
    return uri.rstrip("/").endswith("/debian")


def host_mirror() -> str:
    """The Debian mirror of the host's apt configuration (or ``$HOMELAB_LAB_MIRROR``)."""
    override = os.environ.get("HOMELAB_LAB_MIRROR", "").strip()
    if override:
        return override.rstrip("/")
    sources_dir = Path("/etc/apt/sources.list.d")
    for path in sorted(sources_dir.glob("*.sources")) if sources_dir.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            key = ""
            for line in stanza.splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                if line[0].isspace() and key:
                    fields[key] += " " + line.strip()
                elif ":" in line:
                    key, value = line.split(":", 1)
                    key = key.strip().lower()
                    fields[key] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in fields.get("types", "").split():
                continue
            for uri in fields.get("uris", "").split():
                if _debian_uri(uri):
                    return uri.rstrip("/")
    sources_list = Path("/etc/apt/sources.list")
    if sources_list.is_file():
        for line in sources_list.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 2 and words[0] == "deb" and _debian_uri(words[1]):
                return words[1].rstrip("/")
    raise LabError(
        "found no Debian mirror in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list;"
        " set HOMELAB_LAB_MIRROR to one"
    )


def host_nameservers() -> list[str]:
    servers: list[str] = []
    try:
        text = Path("/etc/resolv.conf").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            servers.append(words[1])
    usable = [s for s in servers if not ipaddress.ip_address(s.split("%")[0]).is_loopback]
    if not usable:
        raise LabError(
            "the host's /etc/resolv.conf names no non-loopback nameserver that the containers"
            f" could use (found: {', '.join(servers) or 'none'})"
        )
    return usable


# --- network -------------------------------------------------------------------------------


def bridge_exists() -> bool:
    return Path(f"/sys/class/net/{hosts.BRIDGE}").exists()


def nft_table_exists() -> bool:
    if shutil.which("nft") is None:  # the lab makes its table with nft: without it, none
        return False
    result = run(["nft", "list", "table", NFT_FAMILY, NFT_TABLE], check=False)
    return result.returncode == 0


# Every container's systemd (and its services) takes inotify instances from the one kernel;
# the default 128 per user runs out with a few labs' worth of hosts ("Too many open files").
INOTIFY_LIMITS = {
    Path("/proc/sys/fs/inotify/max_user_instances"): 1024,
    Path("/proc/sys/fs/inotify/max_user_watches"): 524288,
}


def ensure_kernel_limits() -> None:
    for path, wanted in INOTIFY_LIMITS.items():
        if int(path.read_text()) < wanted:
            path.write_text(f"{wanted}\n")
            say(f"kernel: {path.name} raised to {wanted} for the lab's systemd instances")


def ensure_network() -> None:
    ensure_kernel_limits()
    if not bridge_exists():
        run(["ip", "link", "add", "name", hosts.BRIDGE, "type", "bridge"], what="create bridge")
    info = json.loads(
        run(["ip", "-j", "addr", "show", "dev", hosts.BRIDGE], what="ip addr").stdout or "[]"
    )
    addresses = {a.get("local") for link in info for a in link.get("addr_info", [])}
    if hosts.GATEWAY not in addresses:
        run(
            ["ip", "addr", "add", f"{hosts.GATEWAY}/{hosts.PREFIX_LENGTH}", "dev", hosts.BRIDGE],
            what="address the bridge",
        )
    run(["ip", "link", "set", hosts.BRIDGE, "up"], what="bring the bridge up")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    if not IP_FORWARD_SAVED.exists():
        IP_FORWARD_SAVED.write_text(IP_FORWARD.read_text().strip() + "\n")
    IP_FORWARD.write_text("1\n")
    # Declaring, deleting and redefining the table in one transaction replaces it atomically.
    ruleset = f"""
table {NFT_FAMILY} {NFT_TABLE} {{}}
delete table {NFT_FAMILY} {NFT_TABLE}
table {NFT_FAMILY} {NFT_TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {hosts.SUBNET} oifname != "{hosts.BRIDGE}" masquerade
    }}
}}
"""
    run(["nft", "-f", "-"], input_text=ruleset, what="nft table")
    say(
        f"network: bridge {hosts.BRIDGE} {hosts.GATEWAY}/{hosts.PREFIX_LENGTH}, NAT for "
        f"{hosts.SUBNET} (nft table {NFT_FAMILY} {NFT_TABLE})"
    )


def teardown_network() -> None:
    if nft_table_exists():
        run(["nft", "delete", "table", NFT_FAMILY, NFT_TABLE], what="delete nft table")
    if bridge_exists():
        run(["ip", "link", "del", hosts.BRIDGE], what="delete bridge")
    if IP_FORWARD_SAVED.exists():
        saved = IP_FORWARD_SAVED.read_text().strip()
        if saved in ("0", "1"):
            IP_FORWARD.write_text(saved + "\n")
        IP_FORWARD_SAVED.unlink()


# --- apt-cacher-ng -------------------------------------------------------------------------


def network_down(who: str) -> LabError:
    return LabError(f"{who}: the lab network is down ({hosts.BRIDGE} missing); run `labctl up`")


def port_answers(address: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connect to a lab address succeeds.

    Only while the bridge exists: without it the lab's addresses would be routed off this machine.
    """
    if not bridge_exists():
        return False
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def apt_proxy_pid() -> int | None:
    return read_pid(ACNG_PID_FILE, str(ACNG_CONF_DIR))


def apt_proxy_url() -> str:
    return f"http://{hosts.GATEWAY}:{hosts.APT_PROXY_PORT}"


def ensure_apt_proxy() -> None:
    if not bridge_exists():
        raise network_down("apt proxy")
    if apt_proxy_pid() is not None and port_answers(hosts.GATEWAY, hosts.APT_PROXY_PORT):
        say(f"apt proxy: apt-cacher-ng already answers at {apt_proxy_url()}")
        return
    if port_answers(hosts.GATEWAY, hosts.APT_PROXY_PORT):
        raise LabError(
            f"apt proxy: something else listens on {hosts.GATEWAY}:{hosts.APT_PROXY_PORT} (the"
            " system's apt-cacher-ng service? stop it: /etc/init.d/apt-cacher-ng stop)"
        )
    for directory in (ACNG_CONF_DIR, ACNG_LOG_DIR, APT_CACHE_DIR, RUN_DIR):
        directory.mkdir(parents=True, exist_ok=True)
    # A pure caching pass-through proxy: no Remap-* lines, so it never sends a request anywhere
    # but to the host named in the URL.
    (ACNG_CONF_DIR / "acng.conf").write_text(
        "# Written by tests/lab/labctl.py: the lab's caching apt proxy. No Remap-* lines on\n"
        "# purpose: every request goes to the host named in its URL, and nowhere else.\n"
        f"CacheDir: {APT_CACHE_DIR}\n"
        f"LogDir: {ACNG_LOG_DIR}\n"
        "SupportDir: /usr/lib/apt-cacher-ng\n"
        f"BindAddress: {hosts.GATEWAY}\n"
        f"Port: {hosts.APT_PROXY_PORT}\n"
        f"SocketPath: {RUN_DIR / 'apt-cacher-ng.socket'}\n"
        "ForeGround: 1\n"
        "ReportPage: acng-report.html\n"
        "ExThreshold: 4\n"
    )
    pid = daemonize(
        ["apt-cacher-ng", "-c", str(ACNG_CONF_DIR)], ACNG_LOG_DIR / "apt-cacher-ng.stdout.log"
    )
    ACNG_PID_FILE.write_text(f"{pid}\n")
    if not wait_until(
        lambda: port_answers(hosts.GATEWAY, hosts.APT_PROXY_PORT) or not alive(pid), 15
    ) or not alive(pid):
        log = ACNG_LOG_DIR / "apt-cacher-ng.stdout.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        raise LabError(f"apt proxy: apt-cacher-ng did not start (see {log}):\n{tail(text)}")
    say(f"apt proxy: apt-cacher-ng (pid {pid}) answers at {apt_proxy_url()}")


def stop_daemon(pid: int | None, pid_file: Path) -> bool:
    """SIGTERM a daemon of the lab (SIGKILL after 10 s), then forget its pid file.

    True when there was one to stop."""
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not alive(pid), 10):
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not alive(pid), 5)
    pid_file.unlink(missing_ok=True)
    return pid is not None


def stop_apt_proxy() -> None:
    if stop_daemon(apt_proxy_pid(), ACNG_PID_FILE):
        (RUN_DIR / "apt-cacher-ng.socket").unlink(missing_ok=True)
    say("apt proxy: apt-cacher-ng stopped")


# --- directories served on the bridge: stand-ins and the wheelhouse ------------------------
# Tailscale's apt repository is unreachable from the lab: standin_repo.py builds a signed one
# (test key, test-double package) into the cache; a plain HTTP server serves it to the lab.
# The embedder's wheels (wheelhouse.py) and the stand-in Ollama release are served the same way.


@dataclass(frozen=True)
class ServedDirectory:
    """A directory of the cache served over HTTP on the lab bridge (a daemonized http.server):
    the stand-in repositories and releases, and the wheelhouse. One pid file and log each."""

    label: str
    port: int
    name: str  # pid file and log name

    @property
    def pid_file(self) -> Path:
        return RUN_DIR / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return LOG_DIR / f"{self.name}.log"

    def pid(self) -> int | None:
        return read_pid(self.pid_file, "http.server")

    def serve(self, directory: Path, url: str, started: float, detail: str = "") -> None:
        """Serve ``directory`` unless this very directory is served and answers already."""
        pid = self.pid()
        argv = proc_cmdline(pid) if pid is not None else None
        serving = pid is not None and argv is not None and str(directory) in argv
        if serving and port_answers(hosts.GATEWAY, self.port):
            say(f"{self.label}: already served at {url}")
            return
        if pid is not None:  # serving an older build, or not answering: replace it
            self.stop()
        if port_answers(hosts.GATEWAY, self.port):
            raise LabError(f"{self.label}: something else listens on {hosts.GATEWAY}:{self.port}")
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        pid = daemonize(
            [
                sys.executable, "-m", "http.server",
                "--bind", hosts.GATEWAY,
                "--directory", str(directory),
                str(self.port),
            ],
            self.log,
        )  # fmt: skip
        self.pid_file.write_text(f"{pid}\n")
        if not wait_until(
            lambda: port_answers(hosts.GATEWAY, self.port) or not alive(pid), 15
        ) or not alive(pid):
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise LabError(f"{self.label}: the server did not start:\n{tail(text)}")
        say(
            f"{self.label}: {detail or directory.name} served at {url} by pid {pid}"
            f" ({time.monotonic() - started:.1f}s)"
        )

    def stop(self) -> None:
        if stop_daemon(self.pid(), self.pid_file):
            say(f"{self.label}: server stopped")


STANDIN_REPO = ServedDirectory("stand-in Tailscale repository", standin_repo.PORT, "standin-repo")
WHEELHOUSE = ServedDirectory("wheelhouse", wheelhouse.PORT, "wheelhouse")
# Ollama's release downloads are unreachable from the lab: inference_standin.py builds a release
# of the same shape (test-double archives, sha256sum.txt) into the cache.
INFERENCE_STANDIN = ServedDirectory(
    "stand-in Ollama release", inference_standin.PORT, "inference-standin"
)
SERVED = (STANDIN_REPO, WHEELHOUSE, INFERENCE_STANDIN)


def standin_url() -> str:
    return standin_repo.base_url()


def ensure_standin_repo() -> None:
    """Build the stand-in repository if the cache lacks it, and serve it on the lab bridge."""
    if not bridge_exists():
        raise network_down(STANDIN_REPO.label)
    started = time.monotonic()
    try:
        served = standin_repo.ensure_built()
    except standin_repo.StandinError as exc:
        raise LabError(f"{STANDIN_REPO.label}: {exc}") from exc
    detail = f"{served.name} (key {standin_repo.fingerprint()})"
    STANDIN_REPO.serve(served, standin_url(), started, detail)


def ensure_wheelhouse() -> None:
    """Download the embedder's wheels once (cached) and serve them on the lab bridge."""
    if not bridge_exists():
        raise network_down(WHEELHOUSE.label)
    started = time.monotonic()
    try:
        served = wheelhouse.ensure()
    except (wheelhouse.WheelhouseError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{WHEELHOUSE.label}: {exc}") from exc
    WHEELHOUSE.serve(served, wheelhouse.url(), started, str(served))


def ensure_inference_standin() -> None:
    """Build the stand-in Ollama release if the cache lacks it, and serve it on the bridge."""
    if not bridge_exists():
        raise network_down(INFERENCE_STANDIN.label)
    started = time.monotonic()
    served = inference_standin.ensure_built()
    INFERENCE_STANDIN.serve(served, inference_standin.base_url(), started)


# --- cgroups ------------------------------------------------------------------------------
# Without systemd on the lab machine, systemd-nspawn (--keep-unit) puts every container into the
# same "payload" cgroup below its own. The containers' systemd instances then share one cgroup
# tree: a unit's cgroup holds the processes of the same unit in the other containers, so stopping
# it never sees it empty (user@0.service hangs every shutdown for minutes). Each container's nspawn
# therefore starts in its own cgroup, CGROUP_NAME/<host>, in every process-tracking hierarchy.
# And the containers get a pure cgroup2 hierarchy (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1) even on a
# hybrid host, like a real Debian 13 machine: its systemd (257) no longer supports cgroup v1.

CGROUP_NAME = f"homelab-lab{hosts.SUFFIX}"


def cgroup_bases() -> list[Path]:
    """``CGROUP_NAME`` in the cgroup2 hierarchy and in the v1 name=systemd one (where mounted)."""
    bases: list[Path] = []
    for point, fstype, options in mounts():
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options):
            bases.append(Path(point) / CGROUP_NAME)
    return bases


def prune_cgroups(top: Path, keep_top: bool) -> list[Path]:
    """Remove the empty cgroups at and below ``top``; return those that still hold processes."""
    if not top.is_dir():
        return []
    for directory, _, _ in os.walk(top, topdown=False):
        if keep_top and Path(directory) == top:
            continue
        with suppress(OSError):  # still holds processes (or is gone already)
            os.rmdir(directory)
    busy = [Path(d) for d, _, _ in os.walk(top)] if top.exists() else []
    return [d for d in busy if (d / "cgroup.procs").read_text().strip()]


# --- mounts and deletion -------------------------------------------------------------------


def mounts() -> Iterator[tuple[str, str, list[str]]]:
    """(mount point, file system type, super options) of every mount of this mount namespace."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        rest = fields[fields.index("-") + 1 :]
        yield point, rest[0], rest[2].split(",") if len(rest) > 2 else []


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path).rstrip("/")
    found = [p for p, _, _ in mounts() if p == prefix or p.startswith(prefix + "/")]
    return sorted(found, key=len, reverse=True)


def unmount_under(path: Path) -> None:
    for point in mounts_under(path):
        if run(["umount", point], check=False).returncode != 0:
            run(["umount", "-l", point], check=False)


def remove_tree(path: Path) -> None:
    """Delete ``path`` without ever crossing into a mounted file system."""
    if not path.exists() and not path.is_symlink():
        return
    unmount_under(path)
    run(["rm", "-rf", "--one-file-system", "--", str(path)], what=f"delete {path}")


# --- image ---------------------------------------------------------------------------------


def image_dir() -> Path:
    recipe = f"{SUITE}\n{VARIANT}\n{','.join(sorted(INCLUDE))}\n{IMAGE_RECIPE}\n"
    return IMAGES_DIR / f"debian-{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def ensure_image(rebuild: bool = False) -> Path:
    target = image_dir()
    if target.is_dir() and not rebuild:
        say(f"image: cached {target}")
        return target
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    for stale in IMAGES_DIR.glob(".build-*"):
        remove_tree(stale)
    mirror = host_mirror()
    env = dict(os.environ)
    via = "directly"
    if mirror.startswith("http://") and apt_proxy_pid() is not None and bridge_exists():
        env["http_proxy"] = apt_proxy_url()
        via = f"through {apt_proxy_url()}"
    build = Path(tempfile.mkdtemp(prefix=f".build-{target.name}-", dir=IMAGES_DIR))
    build.chmod(0o755)  # it becomes the containers' "/": mkdtemp's 0700 locks out every non-root
    log = IMAGES_DIR / f"{target.name}.build.log"
    say(f"image: debootstrap {VARIANT} {SUITE} from {mirror} {via} (log: {log})")
    started = time.monotonic()
    try:
        with open(log, "w") as log_file:
            status = subprocess.run(
                [
                    "debootstrap",
                    f"--variant={VARIANT}",
                    f"--include={','.join(INCLUDE)}",
                    SUITE,
                    str(build),
                    mirror,
                ],
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            ).returncode
        if status != 0:
            raise LabError(
                f"image: debootstrap failed (exit {status}), see {log}:\n"
                f"{tail(log.read_text(errors='replace'))}"
            )
        say(f"image: debootstrap done in {time.monotonic() - started:.1f}s")
        prepare_image(build)
        if target.exists():
            old = target.with_name(f".build-old-{target.name}-{os.getpid()}")
            os.rename(target, old)
            os.rename(build, target)
            remove_tree(old)
        else:
            os.rename(build, target)
    except BaseException:
        remove_tree(build)
        raise
    say(f"image: built {target} in {time.monotonic() - started:.1f}s")
    for stale in IMAGES_DIR.glob(f"debian-{SUITE}-*"):
        if stale.is_dir() and stale != target:
            say(f"image: removing the outdated image {stale.name}")
            remove_tree(stale)
    return target


# The VM's image: the lab image with Debian's cloud-init, as a cloud image has it.
CLOUD_PACKAGES = ("cloud-init",)


def cloud_image_dir(base: Path) -> Path:
    recipe = f"{base.name}\n{','.join(CLOUD_PACKAGES)}\n"
    return IMAGES_DIR / f"cloud-{base.name}-{hashlib.sha256(recipe.encode()).hexdigest()[:8]}"


def ensure_cloud_image(base: Path) -> Path:
    """The lab image plus cloud-init (installed through the lab's apt proxy), cached."""
    target = cloud_image_dir(base)
    if target.is_dir():
        say(f"image: cached {target}")
        return target
    started = time.monotonic()
    build = Path(tempfile.mkdtemp(prefix=f".build-{target.name}-", dir=IMAGES_DIR))
    build.chmod(0o755)
    log = IMAGES_DIR / f"{target.name}.build.log"
    try:
        run(["cp", "-a", "--reflink=auto", f"{base}/.", str(build)], what="copy the lab image")
        write_file(build, APT_PROXY_CONF, apt_proxy_conf())
        write_file(build, "etc/apt/sources.list.d/debian.sources", installer_sources(host_mirror()))
        (build / "etc/apt/sources.list").unlink(missing_ok=True)
        install = (
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq"
            f" --no-install-recommends {' '.join(CLOUD_PACKAGES)}"
        )
        with open(log, "w") as log_file:
            status = subprocess.run(
                ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--pipe",
                 "--machine=homelab-cloud-image", "-D", str(build),
                 "sh", "-c", install],
                check=False, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT,
            ).returncode  # fmt: skip
        if status != 0:
            raise LabError(
                f"image: installing {' '.join(CLOUD_PACKAGES)} failed (exit {status}), see"
                f" {log}:\n{tail(log.read_text(errors='replace'))}"
            )
        (build / APT_PROXY_CONF).unlink(missing_ok=True)
        prepare_image(build)
        os.rename(build, target)
    except BaseException:
        remove_tree(build)
        raise
    say(f"image: built {target} in {time.monotonic() - started:.1f}s")
    for stale in IMAGES_DIR.glob("cloud-*"):
        if stale.is_dir() and stale != target:
            remove_tree(stale)
    return target


def prepare_image(root: Path) -> None:
    """Make the debootstrapped root a template: no host identity, networkd enabled."""
    unmount_under(root)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_file() and not dbus_id.is_symlink():
        dbus_id.unlink()
    (root / "etc/hostname").write_text("localhost\n")
    run(["chroot", str(root), "systemctl", "enable", "systemd-networkd"], what="enable networkd")
    for leftover in (root / "var/cache/apt/archives").glob("*.deb"):
        leftover.unlink()


# --- per-host roots ------------------------------------------------------------------------


def write_file(root: Path, relative: str, content: str, mode: int = 0o644) -> None:
    """Write a file inside a container root, never following a symlink out of it."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.write_text(content)
    path.chmod(mode)


def ensure_ssh_key() -> str:
    if not hosts.SSH_KEY.exists():
        hosts.SSH_KEY.parent.mkdir(parents=True, exist_ok=True)
        hosts.SSH_KEY.parent.chmod(0o700)
        run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "homelab-lab",
                "-f",
                str(hosts.SSH_KEY),
            ],
            what="generate the lab SSH key",
        )
        say(f"ssh: generated the lab key {hosts.SSH_KEY}")
    hosts.SSH_KEY.chmod(0o600)
    return Path(f"{hosts.SSH_KEY}.pub").read_text().strip()


def create_root(host: LabHost, image: Path, fresh: bool) -> bool:
    """Copy the image to the host's root if it has none; True when the root is new."""
    created = False
    machine_dir = host.root_dir.parent
    if fresh:
        remove_tree(machine_dir)
        remove_tree(hosts.POOLS_DIR / host.name)
    if not host.root_dir.is_dir():
        machine_dir.mkdir(parents=True, exist_ok=True)
        partial = machine_dir / "root.partial"
        remove_tree(partial)
        started = time.monotonic()
        run(["cp", "-a", "--reflink=auto", str(image), str(partial)], what=f"{host.name}: copy")
        partial.chmod(0o755)
        os.rename(partial, host.root_dir)
        created = True
        say(f"{host.name}: root copied from the image in {time.monotonic() - started:.1f}s")
    for pool in host.pools:
        host.pool_dir(pool).mkdir(parents=True, exist_ok=True)
    return created


def security_mirror(mirror: str) -> str:
    """The Debian security archive beside ``mirror`` (its /debian-security sibling)."""
    override = os.environ.get("HOMELAB_LAB_SECURITY_MIRROR", "").strip()
    if override:
        return override.rstrip("/")
    return mirror.removesuffix("/debian") + "/debian-security"


def installer_sources(mirror: str) -> str:
    """APT sources as Debian 13's installer writes them: release, updates and security."""
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    return (
        f"Types: deb\nURIs: {mirror}\nSuites: trixie trixie-updates\n"
        f"Components: main non-free-firmware\nSigned-By: {keyring}\n\n"
        f"Types: deb\nURIs: {security_mirror(mirror)}\nSuites: trixie-security\n"
        f"Components: main non-free-firmware\nSigned-By: {keyring}\n"
    )


def configure_root(
    host: LabHost, public_key: str, nameservers: list[str], first_boot: bool
) -> None:
    """Lab plumbing on every boot (network, apt proxy, root's key); what an installer leaves
    behind (host name, hosts file, resolv.conf, APT sources, host keys) only on a new root,
    so that a rebooted lab host keeps what the deploy made of it."""
    root = host.root_dir
    if proxmox_guest_marker(host).is_file():
        # Made by `labctl guests` from its Proxmox config: network, names and keys are what
        # Proxmox (and the VM's cloud-init) wrote there, not the lab's.
        write_file(root, APT_PROXY_CONF, apt_proxy_conf())
        return
    # Sorts before the image's 80-container-host0.network, so it wins for host0.
    write_file(
        root,
        "etc/systemd/network/10-host0.network",
        "[Match]\nName=host0\n\n[Network]\n"
        f"Address={host.address}/{hosts.PREFIX_LENGTH}\n"
        f"Gateway={hosts.GATEWAY}\n"
        + "".join(f"DNS={server}\n" for server in nameservers)
        + "LinkLocalAddressing=no\nIPv6AcceptRA=no\n",
    )
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    write_file(root, "root/.ssh/authorized_keys", public_key + "\n", 0o600)
    write_file(root, APT_PROXY_CONF, apt_proxy_conf())
    if not first_boot:
        return
    forget_host(host)
    if host.first_login != "root":
        add_cloud_init_user(root, host.first_login, public_key)
    write_file(root, "etc/hostname", f"{host.name}\n")
    write_file(
        root,
        "etc/hosts",
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{host.name}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\n"
        "ff02::2\tip6-allrouters\n",
    )
    write_file(root, "etc/resolv.conf", "".join(f"nameserver {s}\n" for s in nameservers))
    write_file(root, "etc/apt/sources.list.d/debian.sources", installer_sources(host_mirror()))
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    machine_id = root / "etc/machine-id"
    if machine_id.is_symlink() or not machine_id.is_file() or not machine_id.read_text().strip():
        write_file(root, "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    run(["ssh-keygen", "-A", "-f", str(root)], what=f"{host.name}: ssh host keys")


def apt_proxy_conf() -> str:
    return (
        f'Acquire::http::Proxy "{apt_proxy_url()}";\n'
        # The lab's own servers (the stand-in Tailscale repository) are reached directly.
        f'Acquire::http::Proxy::{hosts.GATEWAY} "DIRECT";\n'
    )


def proxmox_guest_marker(host: LabHost) -> Path:
    """Present while the host's root was made by `labctl guests` (from its Proxmox config)."""
    return host.root_dir.parent / "proxmox-guest.json"


def forget_host(host: LabHost) -> None:
    """A new root is a new host: no run has proven its admin login or met its Proxmox CA yet."""
    logins.record_file(hosts.LOGIN_RECORDS, host.name).unlink(missing_ok=True)
    proxmox_ca.record_file(hosts.PROXMOX_CA_RECORDS, host.name).unlink(missing_ok=True)


def prepare_guest_root(host: LabHost, guest: proxmox_prep.Guest) -> None:
    """A new root for ``host`` as Proxmox prepares guest ``guest`` (tests/lab/proxmox_prep.py):
    the VM's NoCloud seed for its cloud-init, a container's files from pve-container."""
    root = host.root_dir
    forget_host(host)
    write_file(root, APT_PROXY_CONF, apt_proxy_conf())
    write_file(root, "etc/apt/sources.list.d/debian.sources", installer_sources(host_mirror()))
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    write_file(root, "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    (root / "etc/systemd/network/10-host0.network").unlink(missing_ok=True)
    if guest.kind == "qemu":
        for name, content in proxmox_prep.nocloud_seed(guest).items():
            write_file(root, f"{proxmox_prep.SEED_DIR}/{name}", content, 0o600)
        # What systemd-resolved serves on the cloud image once cloud-init has configured the
        # NIC with the seed's nameserver (the lab image has no resolved).
        write_file(root, "etc/resolv.conf", proxmox_prep.vm_resolv_conf(guest))
    else:
        for path, content in proxmox_prep.container_files(guest).items():
            write_file(root, path, content, 0o600 if path.startswith("root/") else 0o644)
        ssh_dir = root / "root/.ssh"
        if ssh_dir.is_dir():
            ssh_dir.chmod(0o700)
        # pve-container's first start of a Debian template: new host keys.
        run(["ssh-keygen", "-A", "-f", str(root)], what=f"{host.name}: ssh host keys")
    proxmox_guest_marker(host).write_text(json.dumps({"vmid": guest.vmid, "kind": guest.kind}))


def add_cloud_init_user(root: Path, user: str, public_key: str) -> None:
    """What cloud-init makes of Proxmox's ``ciuser`` and ``sshkeys`` on a VM's first boot: the
    user with a home, the key, and sudo without a password (its 90-cloud-init-users file)."""
    run(
        ["useradd", "--root", str(root), "--create-home", "--shell", "/bin/bash",
         "--user-group", user],
        what=f"{root.parent.name}: cloud-init's user {user}",
    )  # fmt: skip
    uid, gid = next(
        (int(fields[2]), int(fields[3]))
        for fields in (line.split(":") for line in (root / "etc/passwd").read_text().splitlines())
        if fields[0] == user
    )
    ssh_dir = root / "home" / user / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file(root, f"home/{user}/.ssh/authorized_keys", public_key + "\n", 0o600)
    for path in (ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(path, uid, gid)
    write_file(
        root,
        "etc/sudoers.d/90-cloud-init-users",
        f"# Created by cloud-init v. 24.4 (lab stand-in)\n{user} ALL=(ALL) NOPASSWD:ALL\n",
        0o440,
    )


def write_known_hosts() -> None:
    lines: list[str] = []
    for host in hosts.HOSTS:
        for pub in sorted((host.root_dir / "etc/ssh").glob("ssh_host_*_key.pub")):
            words = pub.read_text().split()
            if len(words) >= 2:
                lines.append(f"{host.name},{host.address} {words[0]} {words[1]}")
    hosts.KNOWN_HOSTS.parent.mkdir(parents=True, exist_ok=True)
    hosts.KNOWN_HOSTS.write_text("\n".join(lines) + "\n" if lines else "")


# --- ssh -----------------------------------------------------------------------------------


def login_user(host: LabHost) -> str:
    """Who the lab logs in to ``host`` as: as pyinfra does, the recorded admin login once a
    rollout proved it (root login is off from then on), else the host's first login."""
    return logins.recorded_user(hosts.LOGIN_RECORDS, host.name) or host.first_login


def ssh_command(host: LabHost, connect_timeout: int = 5) -> list[str]:
    """ssh's arguments up to the login; what follows runs as the login (see ssh_argv)."""
    return [
        "ssh",
        "-i", str(hosts.SSH_KEY),
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={hosts.KNOWN_HOSTS}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"ConnectTimeout={connect_timeout}",
        "-o", "LogLevel=ERROR",
        f"{login_user(host)}@{host.address}",
    ]  # fmt: skip


def as_root(host: LabHost, command: str) -> str:
    """``command`` as ssh sends it to run as root: through sudo, once the login is the admin."""
    return command if login_user(host) == "root" else f"sudo -n sh -c {shlex.quote(command)}"


def ssh_argv(host: LabHost, command: str, connect_timeout: int = 5) -> list[str]:
    """ssh's arguments to run the shell ``command`` as root on ``host``."""
    return [*ssh_command(host, connect_timeout), as_root(host, command)]


def ssh_ok(host: LabHost) -> bool:
    if not port_answers(host.address, 22, timeout=1.0):
        return False
    try:
        result = subprocess.run(
            [*ssh_command(host, connect_timeout=3), "true"],
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def wait_ssh(host: LabHost, timeout: float = SSH_TIMEOUT) -> float:
    """Wait until SSH answers with the lab key; return the seconds waited."""
    started = time.monotonic()
    while not ssh_ok(host):
        if time.monotonic() - started > timeout:
            raise LabError(
                f"{host.name}: SSH at {host.address} did not answer in {timeout:.0f}s"
                f" (container log: {LOG_DIR / (host.name + '.log')})"
            )
        if nspawn_pid(host) is None and supervisor_pid(host) is None:
            raise LabError(
                f"{host.name}: the container stopped while waiting for SSH"
                f" (see {LOG_DIR / (host.name + '.log')})"
            )
        time.sleep(0.5)
    waited = time.monotonic() - started
    say(f"{host.name}: ssh answers ({waited:.1f}s)")
    return waited


def wait_running(host: LabHost) -> None:
    """Wait for `systemctl is-system-running --wait`; fail naming the failed units otherwise."""
    result = run(
        [*ssh_command(host), "systemctl", "is-system-running", "--wait"],
        check=False,
        timeout=RUNNING_TIMEOUT,
        what=f"{host.name}: systemctl is-system-running --wait",
    )
    state = result.stdout.strip() or result.stderr.strip()
    if state == "running":
        say(f"{host.name}: running")
        return
    failed = run(
        [*ssh_command(host), "systemctl", "--failed", "--no-legend", "--plain"],
        check=False,
        timeout=30,
    ).stdout.strip()
    raise LabError(
        f"{host.name}: systemd is {state!r}, not running; failed units:\n"
        f"{failed or '(none listed)'}"
    )


def wait_host(host: LabHost) -> None:
    wait_ssh(host)
    wait_running(host)


# --- containers ----------------------------------------------------------------------------


def supervisor_pid_file(host: LabHost) -> Path:
    return RUN_DIR / f"{host.name}.supervisor.pid"


def stop_file(host: LabHost) -> Path:
    return RUN_DIR / f"{host.name}.stop"


def supervisor_pid(host: LabHost) -> int | None:
    return read_pid(supervisor_pid_file(host), "_supervise")


def veth_name(host: LabHost) -> str:
    # nspawn's name for the host side: vb-<machine>, and the machine name carries the lab's
    # suffix; without it lab n would wait on (and delete) lab 0's veth of the same host.
    return f"vb-{host.name}{hosts.SUFFIX}"[:15]


def nspawn_command(host: LabHost) -> list[str]:
    command = [
        "systemd-nspawn",
        f"--directory={host.root_dir}",
        # Per-lab machine names: nspawn names the host side of the veth vb-<machine>.
        f"--machine={host.name}{hosts.SUFFIX}",
        "--boot",
        "--register=no",
        "--keep-unit",
        f"--network-bridge={hosts.BRIDGE}",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--console=read-only",
    ]
    for pool, inside in host.pools.items():
        command.append(f"--bind={host.pool_dir(pool)}:{inside}")
    command.extend(share_binds(host))
    return command


def share_binds(host: LabHost) -> list[str]:
    """A VM's virtiofs shares, as bind mounts where its mount unit mounts them (``/srv/<pool>``):
    a container has no virtiofs device, so this stands in for Proxmox's virtiofsd. A guest the
    API double made gets what its config names (``virtiofsN`` and the directory mapping; a
    missing directory stops its start, as virtiofsd stops the VM's); a ready-made VM its
    inventory's ``share_pool``, its directory made here."""
    hypervisor = next(h for h in hosts.HOSTS if "hypervisor" in h.groups)
    made_by_double = proxmox_guest_marker(host).is_file()
    if made_by_double:
        shares = proxmox_prep.directory_shares(hypervisor.root_dir, host.name)
    elif host.share_pool:
        inside = hypervisor.pools[host.share_pool]
        shares = [(f"{host.name}-{host.share_pool}", f"{inside}/shares/{host.name}")]
    else:
        return []
    binds = []
    for dirid, path in shares:
        pool = next(
            (p for p, inside in hypervisor.pools.items() if path.startswith(f"{inside}/")), None
        )
        if pool is None:
            raise LabError(
                f"{host.name}: share {dirid} names {path} on {hypervisor.name}, outside its pools"
            )
        source = hypervisor.pool_dir(pool) / os.path.relpath(path, hypervisor.pools[pool])
        if not made_by_double:
            source.mkdir(parents=True, exist_ok=True)
        elif not source.is_dir():
            raise LabError(
                f"{host.name}: its share {dirid} is {path} on {hypervisor.name}, which does not"
                " exist: Proxmox's virtiofsd would not start, nor would the VM"
            )
        binds.append(f"--bind={source}:/srv/{pool}")
    return binds


def supervise(host: LabHost) -> int:
    """The per-container supervisor loop (runs detached, see ``start_container``)."""
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # nspawn asks the container to shut down cleanly

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    supervisor_pid_file(host).write_text(f"{os.getpid()}\n")

    def log(message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"--- labctl supervisor {stamp}: {message}", flush=True)

    status = 0
    veth = Path(f"/sys/class/net/{veth_name(host)}")
    cgroups = [base / host.name for base in cgroup_bases()]

    def enter_cgroups() -> None:  # runs in the child between fork and exec
        for cgroup in cgroups:
            (cgroup / "cgroup.procs").write_text(f"{os.getpid()}\n")

    try:
        while not stopping and not stop_file(host).exists():
            # The veth of the previous boot goes away with its network namespace, not at once.
            if not wait_until(lambda: not veth.exists(), 5):
                subprocess.run(["ip", "link", "del", veth.name], check=False)
            for cgroup in cgroups:  # leftovers of the previous boot, if it was killed
                prune_cgroups(cgroup, keep_top=True)
                cgroup.mkdir(parents=True, exist_ok=True)
            log(f"starting {' '.join(nspawn_command(host))}")
            child = subprocess.Popen(
                nspawn_command(host),
                stdin=subprocess.DEVNULL,
                env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},  # see cgroups above
                preexec_fn=enter_cgroups,  # safe: the supervisor runs no other thread
            )
            status = child.wait()
            child = None
            if status == REBOOT_EXIT_STATUS:
                log("systemd-nspawn exited 133: the container rebooted")
                continue
            log(f"systemd-nspawn exited {status}: the container stays down")
            break
    finally:
        if read_pid(supervisor_pid_file(host), "_supervise") in (None, os.getpid()):
            supervisor_pid_file(host).unlink(missing_ok=True)
        log("supervisor exits")
    return 0 if status in (0, REBOOT_EXIT_STATUS) else 1


def start_container(host: LabHost) -> None:
    if nspawn_pid(host) is not None:
        return
    if not host.root_dir.is_dir():
        raise LabError(f"{host.name}: no root at {host.root_dir}; run `labctl up {host.name}`")
    if not bridge_exists():
        raise network_down(host.name)
    old = supervisor_pid(host)
    if old is not None:  # a supervisor whose container is gone: let it finish first
        wait_until(lambda: not alive(old), 5)
        if alive(old):
            os.kill(old, signal.SIGTERM)
            wait_until(lambda: not alive(old), 5)
    stop_file(host).unlink(missing_ok=True)
    log = LOG_DIR / f"{host.name}.log"
    if log.exists() and log.stat().st_size > LOG_ROTATE_BYTES:
        os.replace(log, log.with_name(log.name + ".1"))
    pid = daemonize([sys.executable, str(Path(__file__).resolve()), "_supervise", host.name], log)
    if not wait_until(lambda: nspawn_pid(host) is not None or not alive(pid), 10) or not alive(pid):
        raise LabError(f"{host.name}: systemd-nspawn did not start; see {LOG_DIR / host.name}.log")
    say(f"{host.name}: booting ({host.address})")


def nsenter(host: LabHost, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    pid = nspawn_pid(host)
    init = container_init(pid) if pid is not None else None
    if init is None:
        raise LabError(f"{host.name}: not running")
    return run(["nsenter", "-t", str(init), "-a", *command], check=False, timeout=timeout)


def pull_plug(host: LabHost) -> bool:
    """SIGKILL the container's init; return False if it was not running."""
    pid = nspawn_pid(host)
    if pid is None:
        return False
    init = container_init(pid)
    if init is not None:
        os.kill(init, signal.SIGKILL)
    if not wait_until(lambda: not alive(pid), 15):
        os.kill(pid, signal.SIGKILL)
        if not wait_until(lambda: not alive(pid), 5):
            raise LabError(f"{host.name}: systemd-nspawn (pid {pid}) does not exit")
    return True


def stop_container(host: LabHost) -> None:
    """Power a host off cleanly (pull the plug after POWEROFF_TIMEOUT); stop its supervisor."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    stop_file(host).touch()
    pid = nspawn_pid(host)
    if pid is not None:
        started = time.monotonic()
        try:
            nsenter(host, "systemctl", "poweroff", timeout=15)
        except LabError as exc:
            warn(f"{host.name}: poweroff request failed: {exc}")
        if wait_until(lambda: not alive(pid), POWEROFF_TIMEOUT):
            say(f"{host.name}: powered off ({time.monotonic() - started:.1f}s)")
        else:
            warn(f"{host.name}: no clean poweroff in {POWEROFF_TIMEOUT:.0f}s; pulling the plug")
            pull_plug(host)
    supervisor = supervisor_pid(host)
    if supervisor is not None and not wait_until(lambda: not alive(supervisor), 5):
        os.kill(supervisor, signal.SIGTERM)
        if not wait_until(lambda: not alive(supervisor), 5):
            os.kill(supervisor, signal.SIGKILL)
    supervisor_pid_file(host).unlink(missing_ok=True)


# --- the VM agent: real snapshots for the API double (vm_agent.py) ---------------------------
# The double runs inside pve's container; the agent, out here, copies and restores the other
# containers' roots. The double and the agent talk through a directory in pve's root.


def hypervisor_host() -> LabHost:
    return next(h for h in hosts.HOSTS if "hypervisor" in h.groups)


def vm_agent_exchange() -> Path:
    """The exchange directory on this machine (``vm_agent.EXCHANGE_INSIDE`` inside pve)."""
    return hypervisor_host().root_dir / vm_agent.EXCHANGE_INSIDE.lstrip("/")


def vm_agent_guests() -> dict[str, vm_agent.Disks]:
    """Every lab host but the hypervisor: its root and its own pools (not virtiofs shares)."""
    hypervisor = hypervisor_host()
    return {
        h.name: vm_agent.Disks(h.name, h.root_dir, {p: h.pool_dir(p) for p in h.pools})
        for h in hosts.HOSTS
        if h != hypervisor
    }


def cgroup2_base() -> Path:
    """``CGROUP_NAME`` in the cgroup2 hierarchy (the one with ``cgroup.freeze``)."""
    for base in cgroup_bases():
        if (base.parent / "cgroup.controllers").exists():
            return base
    raise LabError("no cgroup2 hierarchy is mounted: the VM agent cannot freeze a container")


@contextmanager
def freeze_container(name: str) -> Iterator[None]:
    """Freeze a running lab host for the time of a copy; a stopped one holds still anyway."""
    host = hosts.by_name(name)
    if nspawn_pid(host) is None:
        yield
        return
    with vm_agent.frozen(cgroup2_base() / host.name):
        yield


def power_off_container(name: str) -> bool:
    """Pull a host's plug and wait until its supervisor is gone; True when it was running."""
    host = hosts.by_name(name)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    stop_file(host).touch()  # its supervisor must not boot it again (a reboot just then)
    was_running = pull_plug(host)
    if not wait_until(lambda: supervisor_pid(host) is None, 20):
        raise LabError(f"{host.name}: its supervisor did not exit after the plug was pulled")
    return was_running


def vm_agent_controls() -> vm_agent.Controls:
    return vm_agent.Controls(
        freeze=freeze_container,
        power_off=power_off_container,
        power_on=lambda name: start_container(hosts.by_name(name)),
    )


def vm_agent_pid() -> int | None:
    return read_pid(VM_AGENT_PID_FILE, "_vm-agent")


def ensure_vm_agent() -> None:
    """Start the VM agent unless it runs."""
    pid = vm_agent_pid()
    if pid is not None:
        say(f"VM agent: running (pid {pid})")
        return
    pid = daemonize([sys.executable, str(Path(__file__).resolve()), "_vm-agent"], VM_AGENT_LOG)
    if not wait_until(lambda: vm_agent_pid() == pid or not alive(pid), 10) or not alive(pid):
        text = VM_AGENT_LOG.read_text(errors="replace") if VM_AGENT_LOG.exists() else ""
        raise LabError(f"VM agent did not start (see {VM_AGENT_LOG}):\n{tail(text)}")
    say(f"VM agent (pid {pid}): real snapshots of {', '.join(vm_agent_guests())} for the API"
        f" double, copies in {SNAPSHOTS_DIR}")  # fmt: skip


def stop_vm_agent() -> None:
    if stop_daemon(vm_agent_pid(), VM_AGENT_PID_FILE):
        say("VM agent stopped")


def cmd_vm_agent(args: argparse.Namespace) -> int:
    return vm_agent.serve(
        vm_agent_exchange(),
        vm_agent_guests(),
        SNAPSHOTS_DIR,
        vm_agent_controls(),
        pid_file=VM_AGENT_PID_FILE,
        log_path=VM_AGENT_LOG,
    )


# --- commands ------------------------------------------------------------------------------


def select_hosts(names: Sequence[str]) -> list[LabHost]:
    if not names:
        return list(hosts.HOSTS)
    try:
        return [hosts.by_name(name) for name in names]
    except KeyError as exc:
        raise LabError(str(exc.args[0])) from exc


def one_host(name: str) -> LabHost:
    return select_hosts([name])[0]


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("labctl must run as root (it creates bridges and containers)")


def cmd_deps(args: argparse.Namespace) -> int:
    require_root()
    ensure_deps()
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    require_root()
    with lab_lock():
        ensure_deps()
        ensure_image(rebuild=args.rebuild)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    require_root()
    selected = select_hosts(args.hosts)
    with lab_lock():
        ensure_deps()
        ensure_network()
        ensure_apt_proxy()
        ensure_standin_repo()
        ensure_wheelhouse()
        ensure_inference_standin()
        image = ensure_image()
        public_key = ensure_ssh_key()
        nameservers = host_nameservers()
        running = nspawn_processes()
        if args.fresh:
            to_stop = [host for host in selected if host.name in running]
            in_parallel(to_stop, stop_container, lambda h: h.name)
            running = nspawn_processes()
        to_boot = [host for host in selected if host.name not in running]
        for host in selected:
            if host.name in running:
                say(f"{host.name}: already running")

        def prepare(host: LabHost) -> None:
            created = create_root(host, image, fresh=args.fresh)
            if args.fresh:  # a new root: the copies of the old one are no snapshots of it
                remove_tree(SNAPSHOTS_DIR / host.name)
            configure_root(host, public_key, nameservers, first_boot=created)

        in_parallel(to_boot, prepare, lambda h: h.name)
        write_known_hosts()
        ensure_vm_agent()

        def boot(host: LabHost) -> None:
            if host in to_boot:
                start_container(host)
            wait_host(host)

        in_parallel(selected, boot, lambda h: h.name)
        for host in selected:
            if "hypervisor" in host.groups:  # Proxmox VE cannot run here: its API double does
                start_pve_api_double(host)
                lab_ups.seed(host)  # the UPS on its cable: NUT's dummy-ups reads this file
    say(f"lab up: {', '.join(h.name for h in selected)}")
    return 0


def cmd_guests(args: argparse.Namespace) -> int:
    """Boot, as Proxmox would, the guests the rollout created through the API double."""
    require_root()
    hypervisor = one_host(args.hypervisor)
    with lab_lock():
        ensure_deps()
        if nspawn_pid(hypervisor) is None:
            raise LabError(f"{hypervisor.name}: not running; its API double holds the guests")
        ensure_vm_agent()
        ensure_apt_proxy()
        ensure_standin_repo()
        ensure_wheelhouse()
        ensure_inference_standin()
        image = ensure_image()
        guests = [g for g in proxmox_prep.guests(hypervisor.root_dir) if g.running]
        if not guests:
            raise LabError(f"{hypervisor.name}: the API double holds no running guest")
        lab_guests = []
        for guest in guests:
            try:
                host = hosts.by_name(guest.name)
            except KeyError as error:
                raise LabError(f"guest {guest.vmid} ({guest.name}): {error.args[0]}") from None
            lab_guests.append((guest, host))
        cloud_image = ensure_cloud_image(image) if any(g.kind == "qemu" for g in guests) else None
        running = nspawn_processes()
        in_parallel(
            [h for _, h in lab_guests if h.name in running], stop_container, lambda h: h.name
        )

        def prepare(item: tuple[proxmox_prep.Guest, LabHost]) -> None:
            guest, host = item
            create_root(host, cloud_image if guest.kind == "qemu" else image, fresh=True)
            prepare_guest_root(host, guest)

        in_parallel(lab_guests, prepare, lambda item: item[1].name)
        # Proxmox's boot order: by `startup` order, each `up` seconds after the one before.
        for guest, host in lab_guests:
            order, up = guest.startup
            say(f"{host.name}: {guest.kind} {guest.vmid}, startup order {order}")
            start_container(host)
            time.sleep(up)

        def ready(item: tuple[proxmox_prep.Guest, LabHost]) -> None:
            guest, host = item
            if guest.kind == "qemu":
                # cloud-init makes the host keys and the login at first boot.
                wait_until(lambda: (host.root_dir / "etc/ssh/ssh_host_ed25519_key.pub").is_file(),
                           SSH_TIMEOUT)  # fmt: skip
                write_known_hosts()
            wait_host(host)

        write_known_hosts()
        in_parallel(lab_guests, ready, lambda item: item[1].name)
        write_known_hosts()
    say(f"guests up: {', '.join(h.name for _, h in lab_guests)}")
    return 0


def lab_id_of(pid: int) -> int | None:
    """The HOMELAB_LAB_ID a process runs with (0 when unset), None when it is gone."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for entry in environ:
        if entry.startswith(b"HOMELAB_LAB_ID="):
            return int(entry.split(b"=", 1)[1] or b"0")
    return 0


def leftovers() -> list[str]:
    found: list[str] = []
    for name, pid in sorted(nspawn_processes().items()):
        found.append(f"systemd-nspawn for {name} (pid {pid})")
    for pid in all_pids():
        argv = proc_cmdline(pid)
        if (
            argv
            and "_supervise" in argv
            and alive(pid)
            and any(arg.endswith("labctl.py") for arg in argv)
            and lab_id_of(pid) == hosts.LAB_ID
        ):
            found.append(f"supervisor {' '.join(argv[-2:])} (pid {pid})")
    if apt_proxy_pid() is not None:
        found.append(f"apt-cacher-ng (pid {apt_proxy_pid()})")
    if (agent := vm_agent_pid()) is not None:
        found.append(f"VM agent (pid {agent})")
    for served in SERVED:
        if (pid := served.pid()) is not None:
            found.append(f"{served.label} server (pid {pid})")
    if bridge_exists():
        found.append(f"bridge {hosts.BRIDGE}")
    if nft_table_exists():
        found.append(f"nft table {NFT_FAMILY} {NFT_TABLE}")
    found.extend(f"mount {point}" for point in mounts_under(hosts.STATE_DIR))
    for base in cgroup_bases():
        found.extend(f"cgroup {busy} (still has processes)" for busy in prune_cgroups(base, False))
    return found


def lab_down() -> bool:
    started = time.monotonic()
    stop_vm_agent()  # first: no rollback may start a container while they are stopped
    running = [host for host in hosts.HOSTS if nspawn_pid(host) is not None]
    stopped = [host for host in hosts.HOSTS if host not in running]
    # The guests first, as a hypervisor stops its guests before it powers off: ageis-node's
    # PostgreSQL then ends its WAL streams to receivers that are still there (gone at once,
    # they leave its walsenders waiting for wal_sender_timeout and the poweroff past its limit).
    guests = [h for h in running if not {"hypervisor", "embedder"} & set(h.groups)]
    in_parallel(guests, stop_container, lambda h: h.name)
    in_parallel([h for h in running if h not in guests], stop_container, lambda h: h.name)
    for host in stopped:  # supervisors or stray state of hosts already down
        stop_container(host)
    stop_apt_proxy()
    for served in SERVED:
        served.stop()
    teardown_network()
    unmount_under(hosts.STATE_DIR)
    # Supervisors exit once their container has: give them a moment before judging.
    wait_until(lambda: not leftovers(), 10)
    left = leftovers()
    if left:
        print("labctl: the lab is NOT fully down; left behind:", file=sys.stderr)
        for item in left:
            print(f"  - {item}", file=sys.stderr)
        return False
    say(
        f"lab down in {time.monotonic() - started:.1f}s: no container, supervisor, apt proxy,"
        " bridge, nft table, cgroup or mount left"
    )
    return True


def cmd_down(args: argparse.Namespace) -> int:
    require_root()
    with lab_lock():
        if not lab_down():
            return 1
    say(f"kept the lab state in {hosts.STATE_DIR} and the cache in {hosts.CACHE_DIR}")
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    require_root()
    with lab_lock():
        if not lab_down():
            print(f"labctl: not deleting {hosts.STATE_DIR} while something runs", file=sys.stderr)
            return 1
        remove_tree(hosts.STATE_DIR)  # the VM agent's copies (SNAPSHOTS_DIR) too
    say(f"deleted {hosts.STATE_DIR} (the cache {hosts.CACHE_DIR} stays)")
    return 0


def host_status(host: LabHost) -> str:
    pid = nspawn_pid(host)
    state = "-"
    ssh = "-"
    if pid is not None:
        try:
            result = nsenter(host, "systemctl", "is-system-running", timeout=10)
            state = result.stdout.strip() or "?"
        except LabError:
            state = "?"
        ssh = "ok" if ssh_ok(host) else "FAIL"
    running = "running" if pid is not None else "stopped"
    return f"{host.name:<12} {host.address:<13} {running:<8} {state:<12} {ssh}"


def cmd_status(args: argparse.Namespace) -> int:
    require_root()
    net = "up" if bridge_exists() else "down"
    proxy = "up" if apt_proxy_pid() is not None else "down"
    print(f"network {hosts.BRIDGE}: {net}; apt proxy {apt_proxy_url()}: {proxy}")
    standin = "up" if STANDIN_REPO.pid() is not None else "down"
    print(f"stand-in Tailscale repository {standin_url()}: {standin}")
    print(f"{'HOST':<12} {'ADDRESS':<13} {'STATE':<8} {'SYSTEMD':<12} SSH")
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(hosts.HOSTS)) as pool:
        for line in pool.map(host_status, hosts.HOSTS):
            print(line)
    return 0


def cmd_ssh(args: argparse.Namespace) -> int:
    host = one_host(args.host)
    command = ssh_command(host)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if args.command:  # a command runs as root, as the lab's tests run theirs
        command.append(as_root(host, " ".join(args.command)))
    os.execvp(command[0], command)


def cmd_kill(args: argparse.Namespace) -> int:
    require_root()
    host = one_host(args.host)
    with lab_lock():
        stop_file(host).parent.mkdir(parents=True, exist_ok=True)
        stop_file(host).touch()  # whatever nspawn's exit status, the supervisor must not restart
        if not pull_plug(host):
            say(f"{host.name}: already stopped")
            return 0
        supervisor = supervisor_pid(host)
        if supervisor is not None:
            wait_until(lambda: not alive(supervisor), 5)
    say(f"{host.name}: plug pulled; systemd-nspawn is gone")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    require_root()
    host = one_host(args.host)
    with lab_lock():
        if nspawn_pid(host) is not None:
            say(f"{host.name}: already running")
        else:
            if not bridge_exists():
                raise network_down(host.name)
            ensure_apt_proxy()
            ensure_standin_repo()
            ensure_wheelhouse()
            ensure_inference_standin()
            start_container(host)
        wait_ssh(host)
    say(f"{host.name}: started")
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    require_root()
    host = one_host(args.host)
    if nspawn_pid(host) is None:
        raise LabError(f"{host.name}: not running; run `labctl start {host.name}`")
    wait_host(host)
    return 0


def cmd_reboot(args: argparse.Namespace) -> int:
    require_root()
    host = one_host(args.host)
    with lab_lock():
        pid = nspawn_pid(host)
        init = container_init(pid) if pid is not None else None
        if pid is None or init is None:
            raise LabError(f"{host.name}: not running; run `labctl start {host.name}`")
        if supervisor_pid(host) is None:
            raise LabError(f"{host.name}: no supervisor runs it, so it would not come back")
        result = nsenter(host, "systemctl", "reboot", timeout=30)
        if result.returncode != 0:
            raise LabError(f"{host.name}: systemctl reboot failed: {tail(result.stderr)}")
        if not wait_until(lambda: not alive(init), 60):
            raise LabError(f"{host.name}: did not go down within 60s of `systemctl reboot`")
        say(f"{host.name}: went down")
        if not wait_until(lambda: nspawn_pid(host) is not None, 15):
            raise LabError(
                f"{host.name}: the supervisor did not restart the container"
                f" (see {LOG_DIR / host.name}.log)"
            )
        wait_ssh(host)
    say(f"{host.name}: rebooted")
    return 0


def start_pve_api_double(host: LabHost) -> None:
    try:
        took = pve_api_double.start(host, nsenter)
    except RuntimeError as exc:
        raise LabError(f"Proxmox API double: {exc}") from exc
    say(f"{host.name}: Proxmox API test double on https://{host.address}:{pve_api_double.PORT}"
        f" ({took:.1f}s)")  # fmt: skip


def cmd_pve_api(args: argparse.Namespace) -> int:
    require_root()
    host = one_host(args.host)
    with lab_lock():
        if nspawn_pid(host) is None:
            raise LabError(f"{host.name}: not running")
        if args.action == "start":
            start_pve_api_double(host)
        elif args.action == "reset":
            pve_api_double.reset(host, nsenter)
            say(f"{host.name}: Proxmox API test double reset (empty state)")
        elif args.action == "stop":
            pve_api_double.stop(host, nsenter)
        state = "answers" if pve_api_double.answers(host) else "does not answer"
        say(f"{host.name}: Proxmox API test double {state} on {host.address}:{pve_api_double.PORT}")
    return 0


def cmd_supervise(args: argparse.Namespace) -> int:
    return supervise(one_host(args.host))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="labctl", description="Boot and control the lab's systemd-nspawn hosts."
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("deps", help="install missing host packages").set_defaults(func=cmd_deps)
    image = sub.add_parser("image", help="build or reuse the cached Debian 13 root")
    image.add_argument("--rebuild", action="store_true", help="build even if cached")
    image.set_defaults(func=cmd_image)
    up = sub.add_parser("up", help="bring the lab (or some hosts) up and wait for them")
    up.add_argument("--fresh", action="store_true", help="recreate roots and pools from the image")
    up.add_argument("hosts", nargs="*", metavar="HOST")
    up.set_defaults(func=cmd_up)
    guests = sub.add_parser(
        "guests", help="boot the guests the API double created, prepared as Proxmox does"
    )
    guests.add_argument("hypervisor", nargs="?", default="pve", metavar="HYPERVISOR")
    guests.set_defaults(func=cmd_guests)
    sub.add_parser("down", help="stop everything, keep state").set_defaults(func=cmd_down)
    sub.add_parser("destroy", help="down, then delete the state").set_defaults(func=cmd_destroy)
    sub.add_parser("status", help="one line per host").set_defaults(func=cmd_status)
    ssh = sub.add_parser("ssh", help="ssh into a host as its login; a command runs as root")
    ssh.add_argument("host", metavar="HOST")
    ssh.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")
    ssh.set_defaults(func=cmd_ssh)
    for name, func, text in (
        ("kill", cmd_kill, "pull the plug of a host"),
        ("start", cmd_start, "start a stopped host, wait for SSH"),
        ("wait", cmd_wait, "wait for SSH and a running systemd"),
        ("reboot", cmd_reboot, "reboot a host cleanly, wait for SSH"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("host", metavar="HOST")
        command.set_defaults(func=func)
    pve_api = sub.add_parser("pve-api", help="the Proxmox API test double on the hypervisor")
    pve_api.add_argument("action", choices=("start", "stop", "reset", "status"))
    pve_api.add_argument("host", nargs="?", default="pve", metavar="HOST")
    pve_api.set_defaults(func=cmd_pve_api)
    supervise_parser = sub.add_parser("_supervise")  # internal: the per-container supervisor
    supervise_parser.add_argument("host", metavar="HOST")
    supervise_parser.set_defaults(func=cmd_supervise)
    # internal: the VM agent (vm_agent.py), started detached by `up` and `guests`
    sub.add_parser("_vm-agent").set_defaults(func=cmd_vm_agent)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except LabError as exc:
        print(f"labctl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("labctl: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
