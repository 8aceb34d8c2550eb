"""Test double of the Proxmox VE API: an HTTPS server speaking ``/api2/json`` with kept state.

Test double, not Proxmox. It stands in for a Proxmox VE node's API (pveproxy on port 8006)
in tests and in the lab, where Proxmox itself cannot run. What it does like the real API:

- every request is first checked against Proxmox's own API schema (``pve_schema.py``:
  ``apidata-v9.json``, or ``apidata-v8.json`` with ``version=8``): an unknown path or method
  is a 501, an unknown parameter, a missing one or a value of the wrong form (``hostpci0``
  with ``pcie=yes``, a ``prune-backups`` key that does not exist) a 400 naming the parameter;
- log in as ``root@pam`` with a password (``POST /access/ticket``: ticket cookie, and the
  ``CSRFPreventionToken`` header on writes) or with an API token
  (``Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET``); a token may not set a raw
  ``hostpci`` address (only a PCI resource mapping), as on the real API;
- state for one node: storages, qemu VMs and LXC containers with their config (disks
  allocated from ``STORAGE:SIZE``, ``import-from`` and ``STORAGE:cloudinit``, NICs given a MAC,
  ``delete=``, ``digest``), run state, snapshots (with rollback; see below), backup jobs
  (``/cluster/backup``), PCI and directory resource mappings (``/cluster/mapping/pci``,
  ``/cluster/mapping/dir``: a ``virtiofs`` key must name one), storage volumes
  (``download-url``, ``aplinfo`` templates);
- writes that are tasks on the real API answer a UPID; ``/nodes/{node}/tasks/{upid}/status``
  reports it running, then stopped with ``exitstatus`` ``OK`` (or the error injected with
  ``fail_tasks``), ``/log`` its log lines; a task that waits on the lab's VM agent runs in the
  background and reports ``running`` until it has finished (one that a restart of the double
  cut short is failed, "interrupted");
- the read endpoints a monitoring exporter and a status report use (``/version``,
  ``/cluster/status``, ``/cluster/resources``, ``/nodes``, ``/nodes/{node}/status``,
  ``/nodes/{node}/storage``, ``/nodes/{node}/qemu/{vmid}/status/current``).

What is real and what is bookkeeping: guests, disks and volumes are records only (no VM runs,
nothing is downloaded or allocated). Snapshots are records too, except for a guest that is a lab
host, with ``lab_vm_agent`` (``--lab-vm-agent DIR``) set and the guest's name (``name``, or an
LXC's ``hostname``) listed in ``DIR/guests``: then a snapshot, its deletion and a rollback are
done for real by the lab's VM agent (``tests/lab/vm_agent.py``, on the lab machine) on the lab
container standing in for the guest: a frozen copy of its root and disks, a rollback that pulls
its plug, restores the files and starts it again (``start=1``). The double asks through ``DIR``
(``requests/<id>.json``, ``replies/<id>.json``) and records the snapshot once the agent
answered; it cannot save RAM (``vmstate=1`` is refused for such a guest).

Run in-process (``PveApiDouble(...).start()``, tests) or as a program (the lab starts it inside
the ``pve`` container on port 8006: ``python3 pve_api.py --help``). Standard library only.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import secrets
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

try:
    from tests.doubles.pve_schema import ApiSchema, SchemaError, parse_property_string
except ImportError:  # run as a program, next to pve_schema.py (the lab)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pve_schema import ApiSchema, SchemaError, parse_property_string  # type: ignore

VERSIONS = {9: ("9.0.10", "9.0"), 8: ("8.4.14", "8.4")}
DISK_KEY = re.compile(r"^(scsi|virtio|sata|ide)\d+$|^efidisk0$|^tpmstate0$")
LXC_DISK_KEY = re.compile(r"^rootfs$|^mp\d+$")
NET_KEY = re.compile(r"^net\d+$")
HOSTPCI_KEY = re.compile(r"^hostpci\d+$")
VIRTIOFS_KEY = re.compile(r"^virtiofs\d+$")
SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)$")
UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# What a downloaded cloud image or template counts as, in bytes (the double fetches nothing).
FAKE_VOLUME_SIZE = 2 * 1024**3
# How long a snapshot task waits for the lab's VM agent (a first full copy of a root is slow).
AGENT_TIMEOUT = 900.0
INTERRUPTED = "interrupted: the API double restarted while the task ran"


def size_bytes(text: str) -> int:
    match = SIZE.match(text)
    if not match:
        raise ValueError(f"bad size {text!r}")
    return int(float(match[1]) * UNITS[match[2] or "G"])


def size_text(count: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if count % UNITS[unit] == 0:
            return f"{count // UNITS[unit]}{unit}"
    return str(count)


class ApiError(Exception):
    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or {}


_SCHEMAS: dict[int, ApiSchema] = {}


def _schema(version: int) -> ApiSchema:
    """The parsed schema, once per process (it is read-only)."""
    if version not in _SCHEMAS:
        _SCHEMAS[version] = ApiSchema(version)
    return _SCHEMAS[version]


class PveState:
    """Everything the double remembers; JSON-serialisable (saved to ``state_file``)."""

    def __init__(self, node: str, address: str) -> None:
        self.node = node
        self.address = address
        self.storages: dict[str, dict[str, Any]] = {
            "local": {
                "storage": "local",
                "type": "dir",
                "path": "/var/lib/vz",
                "content": "iso,vztmpl,backup",
            },
        }
        self.volumes: dict[str, dict[str, Any]] = {}  # volid -> {content, size, vmid?}
        # The appliance index (`pveam available`), as a node that ran `pveam update` lists it.
        self.appliances: list[dict[str, Any]] = [
            {"os": os_name, "package": package, "version": version, "section": "system",
             "template": f"{package}_{version}_amd64.tar.zst", "type": "lxc"}
            for os_name, package, version in (
                ("debian-12", "debian-12-standard", "12.12-1"),
                ("debian-13", "debian-13-standard", "13.1-2"),
                ("ubuntu-24.04", "ubuntu-24.04-standard", "24.04-2"),
            )
        ]  # fmt: skip
        self.guests: dict[int, dict[str, Any]] = {}  # vmid -> {kind, config, status, snapshots}
        self.backup_jobs: dict[str, dict[str, Any]] = {}
        self.pci_mappings: dict[str, dict[str, Any]] = {}
        self.dir_mappings: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.counter = 0

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PveState:
        state = cls(data["node"], data["address"])
        state.__dict__.update(data)
        state.guests = {int(k): v for k, v in data["guests"].items()}
        return state


class PveApiDouble:
    """The API double: schema check, auth, state, UPID tasks. ``start()`` serves HTTPS."""

    def __init__(
        self,
        *,
        node: str = "pve",
        address: str = "127.0.0.1",
        version: int = 9,
        password: str | None = None,
        tokens: dict[str, str] | None = None,
        state_file: Path | None = None,
        check_paths: bool = False,
        running_polls: int = 1,
        lab_vm_agent: Path | None = None,
        agent_timeout: float = AGENT_TIMEOUT,
    ) -> None:
        self.schema = _schema(version)
        self.version = version
        self.password = password
        self.tokens = dict(tokens or {})  # "root@pam!homelab" -> secret
        self.state_file = state_file
        self.check_paths = check_paths
        self.running_polls = running_polls
        self.lab_vm_agent = lab_vm_agent
        self.agent_timeout = agent_timeout
        self.lock = threading.RLock()
        if state_file is not None and state_file.exists():
            self.state = PveState.from_json(json.loads(state_file.read_text()))
        else:
            self.state = PveState(node, address)
        for record in self.state.tasks.values():  # their threads died with the last process
            if record["exitstatus"] is None:
                record["exitstatus"] = INTERRUPTED
                record["log"].append(f"TASK ERROR: {INTERRUPTED}")
        self.tickets: dict[str, str] = {}  # ticket -> user
        self.csrf: dict[str, str] = {}  # ticket -> CSRF token
        self.fail_tasks: dict[str, str] = {}  # task type -> error (in-process fault injection)
        self.requests: list[tuple[str, str, dict[str, Any], str]] = []  # method, path, params, who
        self.rejected: list[tuple[str, str, str]] = []  # method, path, error
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # --- serving ------------------------------------------------------------------------

    def start(
        self,
        bind: str = "127.0.0.1",
        port: int = 0,
        cert: Path | None = None,
        key: Path | None = None,
    ) -> int:
        """Serve HTTPS in a thread; return the port. Without ``cert``, plain HTTP (tests)."""
        double = self

        class Handler(_Handler):
            api = double

        self.server = ThreadingHTTPServer((bind, port), Handler)
        self.server.daemon_threads = True
        if cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(cert), str(key) if key else None)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self.server.server_address[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def save(self) -> None:
        if self.state_file is None:
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state.to_json(), indent=1, sort_keys=True))
        tmp.replace(self.state_file)

    # --- auth ---------------------------------------------------------------------------

    def login(self, params: dict[str, Any]) -> dict[str, Any]:
        user = str(params.get("username", ""))
        if "@" not in user and params.get("realm"):
            user = f"{user}@{params['realm']}"
        if user != "root@pam" or self.password is None or params.get("password") != self.password:
            raise ApiError(401, "authentication failure")
        ticket = f"PVE:{user}:{secrets.token_hex(16).upper()}"
        self.tickets[ticket] = user
        self.csrf[ticket] = secrets.token_hex(16)
        return {
            "ticket": ticket,
            "CSRFPreventionToken": self.csrf[ticket],
            "username": user,
            "cap": {},
        }

    def authenticate(self, method: str, headers: Any) -> str:
        """The caller (``root@pam`` or ``root@pam!token``); 401 when not logged in."""
        auth = headers.get("Authorization", "")
        if auth.startswith("PVEAPIToken="):
            match = re.fullmatch(r"PVEAPIToken=([^!]+![^=]+)[=:](.+)", auth)
            if not match or self.tokens.get(match[1]) != match[2]:
                raise ApiError(401, "invalid token value!")
            return match[1]
        cookies = {}
        for part in headers.get("Cookie", "").split(";"):
            if "=" in part:
                name, value = part.strip().split("=", 1)
                cookies[name] = unquote(value)
        ticket = cookies.get("PVEAuthCookie")
        if not ticket or ticket not in self.tickets:
            raise ApiError(401, "No ticket")
        if method != "GET" and headers.get("CSRFPreventionToken") != self.csrf[ticket]:
            raise ApiError(401, "Permission denied - invalid csrf token")
        return self.tickets[ticket]

    # --- dispatch -----------------------------------------------------------------------

    def handle(self, method: str, path: str, params: dict[str, Any], headers: Any) -> Any:
        try:
            schema_path, path_params = self.schema.check(method, path, params)
        except SchemaError as error:
            self.rejected.append((method, path, str(error)))
            raise ApiError(error.status, error.message, error.errors) from None
        if schema_path == "/access/ticket" and method == "POST":
            who = "login"
            result = self.login(params)
        else:
            who = self.authenticate(method, headers)
            with self.lock:
                result = self.route(method, schema_path, path_params, params, who)
                self.save()
        self.requests.append((method, path, dict(params), who))
        return result

    def route(
        self, method: str, schema_path: str, pp: dict[str, str], params: dict[str, Any], who: str
    ) -> Any:
        name = schema_path.replace("{", "").replace("}", "").strip("/").replace("/", "_")
        name = re.sub(r"[^a-z0-9_]", "_", name.lower())
        handler = getattr(self, f"{method.lower()}_{name}", None)
        if handler is None:
            raise ApiError(501, f"{method} {schema_path}: in the schema, not in the test double")
        if "node" in pp and pp["node"] != self.state.node:
            raise ApiError(595, f"no such cluster node '{pp['node']}'")
        return handler(pp, params, who)

    # --- tasks --------------------------------------------------------------------------

    def task(
        self,
        kind: str,
        ident: str,
        who: str,
        work: Any = None,
        log: list[str] | None = None,
        background: Any = None,
    ) -> str:
        """Run ``work`` (a callable) as a task; return its UPID. An ApiError fails the task.

        With ``background`` (a callable returning log lines), the task runs in a thread: first
        ``background()`` without ``self.lock`` (the slow part, e.g. waiting for the lab's VM
        agent), then ``work()`` under it; until then the task has no exit status and its status
        reads ``running``. Called with ``self.lock`` held (as ``route`` is)."""
        self.state.counter += 1
        now = int(time.time())
        upid = (
            f"UPID:{self.state.node}:{0x1000 + self.state.counter:08X}:"
            f"{0x2000 + self.state.counter:08X}:{now:08X}:{kind}:{ident}:{who}:"
        )
        record: dict[str, Any] = {
            "upid": upid,
            "type": kind,
            "id": ident,
            "user": who,
            "node": self.state.node,
            "starttime": now,
            "pid": 0x1000 + self.state.counter,
            "exitstatus": None,  # running
            "log": list(log or []),
            "polls": 0,
        }
        self.state.tasks[upid] = record
        failure = self.fail_tasks.pop(kind, None)
        if failure is not None:
            self._finish(record, ApiError(500, failure))
        elif background is None:
            self._run_task(record, work)
        else:
            thread = threading.Thread(
                target=self._run_background, args=(record, background, work), daemon=True
            )
            thread.start()
        return upid

    @staticmethod
    def _finish(record: dict[str, Any], error: ApiError | None = None) -> None:
        record["log"].append(f"TASK ERROR: {error.message}" if error else "TASK OK")
        record["exitstatus"] = error.message if error else "OK"

    def _run_task(self, record: dict[str, Any], work: Any) -> None:
        try:
            if work is not None:
                record["log"].extend(work() or [])
        except ApiError as error:
            self._finish(record, error)
        else:
            self._finish(record)

    def _run_background(self, record: dict[str, Any], background: Any, work: Any) -> None:
        try:
            lines = list(background() or [])
        except ApiError as error:
            failure: ApiError | None = error
        except Exception as error:  # a bug in the double: the task says so
            failure = ApiError(500, f"test double error: {error!r}")
        else:
            failure = None
        with self.lock:
            if failure is not None:
                self._finish(record, failure)
            else:
                record["log"].extend(lines)
                self._run_task(record, work)
            self.save()

    def get_nodes_node_tasks(self, pp: dict, params: dict, who: str) -> list:
        """The node's finished tasks, newest first (``typefilter``, ``limit``), as the task
        list shows them: ``status`` is the exit status."""
        kind = params.get("typefilter")
        found = [
            t
            for t in self.state.tasks.values()
            if (not kind or t["type"] == kind) and t["exitstatus"] is not None
        ]
        found.sort(key=lambda t: (t["starttime"], t["pid"]), reverse=True)
        return [
            {
                **{k: t[k] for k in ("upid", "type", "id", "user", "node", "starttime", "pid")},
                "endtime": t["starttime"],
                "status": t["exitstatus"],
            }
            for t in found[: int(params.get("limit", 50))]
        ]

    def get_nodes_node_tasks_upid_status(self, pp: dict, params: dict, who: str) -> dict:
        task = self._task(pp["upid"])
        task["polls"] += 1
        running = task["exitstatus"] is None or task["polls"] <= self.running_polls
        result = {k: task[k] for k in ("upid", "type", "id", "user", "node", "starttime", "pid")}
        result["pstart"] = task["pid"] + 0x1000
        result["status"] = "running" if running else "stopped"
        if not running:
            result["exitstatus"] = task["exitstatus"]
        return result

    def get_nodes_node_tasks_upid_log(self, pp: dict, params: dict, who: str) -> list:
        task = self._task(pp["upid"])
        start = int(params.get("start", 0))
        limit = int(params.get("limit", 50))
        lines = task["log"][start : start + limit]
        return [{"n": start + i + 1, "t": line} for i, line in enumerate(lines)]

    def _task(self, upid: str) -> dict[str, Any]:
        if upid not in self.state.tasks:
            raise ApiError(500, f"no such task '{upid}'")
        return self.state.tasks[upid]

    # --- cluster and node reads ---------------------------------------------------------

    def get_version(self, pp: dict, params: dict, who: str) -> dict:
        version, release = VERSIONS[self.version]
        return {"version": version, "release": release, "repoid": "0123abcd", "console": "xtermjs"}

    def get_cluster_status(self, pp: dict, params: dict, who: str) -> list:
        return [
            {
                "type": "node",
                "name": self.state.node,
                "id": f"node/{self.state.node}",
                "ip": self.state.address,
                "online": 1,
                "local": 1,
                "nodeid": 0,
                "level": "",
            }
        ]

    def _node_summary(self) -> dict[str, Any]:
        return {
            "node": self.state.node,
            "status": "online",
            "type": "node",
            "id": f"node/{self.state.node}",
            "cpu": 0.03,
            "maxcpu": 28,
            "mem": 8 * 1024**3,
            "maxmem": 128 * 1024**3,
            "uptime": 86400,
            "level": "",
        }

    def get_nodes(self, pp: dict, params: dict, who: str) -> list:
        return [self._node_summary()]

    def get_nodes_node(self, pp: dict, params: dict, who: str) -> list:
        return [{"name": n} for n in ("qemu", "lxc", "storage", "tasks", "status", "version")]

    def get_nodes_node_status(self, pp: dict, params: dict, who: str) -> dict:
        version, _ = VERSIONS[self.version]
        return {
            "uptime": 86400,
            "cpu": 0.03,
            "loadavg": ["0.10", "0.12", "0.09"],
            "memory": {"total": 128 * 1024**3, "used": 8 * 1024**3, "free": 120 * 1024**3},
            "swap": {"total": 0, "used": 0, "free": 0},
            "rootfs": {"total": 100 * 1024**3, "used": 10 * 1024**3, "avail": 90 * 1024**3},
            "cpuinfo": {
                "model": "Intel(R) Xeon(R) CPU E5-2690 v4 @ 2.60GHz",
                "cores": 14,
                "cpus": 28,
                "sockets": 1,
                "mhz": "2600.000",
            },
            "pveversion": f"pve-manager/{version}/0123abcd",
            "kversion": "Linux 6.14.8-2-pve",
        }

    def get_cluster_resources(self, pp: dict, params: dict, who: str) -> list:
        kind = params.get("type")
        out: list[dict[str, Any]] = []
        if kind in (None, "node"):
            out.append(self._node_summary())
        if kind in (None, "vm"):
            out.extend(self._guest_summary(vmid) for vmid in sorted(self.state.guests))
        if kind in (None, "storage"):
            for entry in self.get_nodes_node_storage({}, {}, who):
                out.append(
                    {
                        "type": "storage",
                        "id": f"storage/{self.state.node}/{entry['storage']}",
                        "node": self.state.node,
                        "storage": entry["storage"],
                        "status": "available" if entry["active"] else "unknown",
                        "disk": entry["used"],
                        "maxdisk": entry["total"],
                        "content": entry["content"],
                        "plugintype": entry["type"],
                    }
                )
        return out

    # --- storages -----------------------------------------------------------------------

    def get_storage(self, pp: dict, params: dict, who: str) -> list:
        return [
            dict(s) for s in self.state.storages.values() if params.get("type") in (None, s["type"])
        ]

    def post_storage(self, pp: dict, params: dict, who: str) -> dict:
        storage = params["storage"]
        if storage in self.state.storages:
            raise ApiError(500, f"create storage failed: storage ID '{storage}' already defined")
        if params["type"] == "dir" and "path" not in params:
            raise ApiError(400, "Parameter verification failed.", {"path": "property is missing"})
        if params["type"] == "zfspool" and "pool" not in params:
            raise ApiError(400, "Parameter verification failed.", {"pool": "property is missing"})
        self.state.storages[storage] = {k: v for k, v in params.items()}
        return {"storage": storage, "type": params["type"]}

    def get_storage_storage(self, pp: dict, params: dict, who: str) -> dict:
        if pp["storage"] not in self.state.storages:
            raise ApiError(500, f"storage '{pp['storage']}' does not exist")
        return {**self.state.storages[pp["storage"]], "digest": self._digest(self.state.storages)}

    def put_storage_storage(self, pp: dict, params: dict, who: str) -> dict:
        current = self.state.storages.get(pp["storage"])
        if current is None:
            raise ApiError(500, f"storage '{pp['storage']}' does not exist")
        for key in _split_list(params.pop("delete", "")):
            current.pop(key, None)
        params.pop("digest", None)
        current.update(params)
        return {"storage": pp["storage"], "type": current["type"]}

    def _storage_active(self, storage: dict[str, Any]) -> bool:
        if str(storage.get("disable", "0")) == "1":
            return False
        if not self.check_paths:
            return True
        if storage["type"] == "dir":
            path = storage["path"]
            if str(storage.get("is_mountpoint", "no")) not in ("no", "0"):
                return _is_mountpoint(path)
            return os.path.isdir(path)
        return True

    def get_nodes_node_storage(self, pp: dict, params: dict, who: str) -> list:
        out = []
        for storage in self.state.storages.values():
            if "storage" in params and params["storage"] != storage["storage"]:
                continue
            content = storage.get("content", "")
            if "content" in params and not set(_split_list(params["content"])) & set(
                _split_list(content)
            ):
                continue
            active = self._storage_active(storage)
            total = used = 0
            if active and self.check_paths and storage["type"] == "dir":
                fs = os.statvfs(storage["path"])
                total, used = fs.f_blocks * fs.f_frsize, (fs.f_blocks - fs.f_bfree) * fs.f_frsize
            elif active:
                total, used = (
                    1024**4,
                    sum(
                        v["size"]
                        for k, v in self.state.volumes.items()
                        if k.startswith(storage["storage"] + ":")
                    ),
                )
            out.append(
                {
                    "storage": storage["storage"],
                    "type": storage["type"],
                    "content": content,
                    "active": int(active),
                    "enabled": int(str(storage.get("disable", "0")) != "1"),
                    "shared": 0,
                    "total": total,
                    "used": used,
                    "avail": total - used,
                    "used_fraction": used / total if total else 0,
                }
            )
        return out

    def get_nodes_node_storage_storage_status(self, pp: dict, params: dict, who: str) -> dict:
        for entry in self.get_nodes_node_storage({}, {"storage": pp["storage"]}, who):
            return entry
        raise ApiError(500, f"storage '{pp['storage']}' does not exist")

    def _need_storage(self, storage: str, content: str) -> dict[str, Any]:
        config = self.state.storages.get(storage)
        if config is None:
            raise ApiError(500, f"storage '{storage}' does not exist")
        if content not in _split_list(config.get("content", "")):
            raise ApiError(500, f"storage '{storage}' does not support content-type '{content}'")
        if not self._storage_active(config):
            raise ApiError(500, f"storage '{storage}' is not online")
        return config

    def get_nodes_node_storage_storage_content(self, pp: dict, params: dict, who: str) -> list:
        if pp["storage"] not in self.state.storages:
            raise ApiError(500, f"storage '{pp['storage']}' does not exist")
        out = []
        for volid, volume in sorted(self.state.volumes.items()):
            if not volid.startswith(pp["storage"] + ":"):
                continue
            if "content" in params and params["content"] != volume["content"]:
                continue
            if "vmid" in params and str(volume.get("vmid")) != str(params["vmid"]):
                continue
            out.append(
                {
                    "volid": volid,
                    "content": volume["content"],
                    "size": volume["size"],
                    "format": volume.get("format", "raw"),
                    "ctime": volume.get("ctime", 0),
                    **({"vmid": volume["vmid"]} if "vmid" in volume else {}),
                }
            )
        return out

    def post_nodes_node_storage_storage_download_url(
        self,
        pp: dict,
        params: dict,
        who: str,
    ) -> str:
        content, filename = params["content"], params["filename"]
        folder = {"iso": "iso", "vztmpl": "vztmpl", "import": "import"}[content]
        volid = f"{pp['storage']}:{folder}/{filename}"

        def work() -> list[str]:
            self._need_storage(pp["storage"], content)
            if volid in self.state.volumes:
                raise ApiError(500, f"refusing to override existing file '{filename}'")
            self.state.volumes[volid] = {
                "content": content,
                "size": FAKE_VOLUME_SIZE,
                "format": filename.rsplit(".", 1)[-1],
                "ctime": int(time.time()),
            }
            return [f"downloading {params['url']} to {filename} (test double: not fetched)"]

        return self.task("download", pp["storage"], who, work)

    def get_nodes_node_aplinfo(self, pp: dict, params: dict, who: str) -> list:
        return [dict(item) for item in self.state.appliances]

    def post_nodes_node_aplinfo(self, pp: dict, params: dict, who: str) -> str:
        volid = f"{params['storage']}:vztmpl/{params['template']}"
        offered = {item["template"] for item in self.state.appliances}
        if params["template"] not in offered:
            raise ApiError(400, f"no such template '{params['template']}'")

        def work() -> list[str]:
            self._need_storage(params["storage"], "vztmpl")
            self.state.volumes[volid] = {
                "content": "vztmpl",
                "size": 128 * 1024**2,
                "format": "tzst",
                "ctime": int(time.time()),
            }
            return [f"downloading template {params['template']} (test double: not fetched)"]

        return self.task("download", params["template"], who, work)

    # --- guests: common -----------------------------------------------------------------

    def _guest(self, vmid: str | int, kind: str) -> dict[str, Any]:
        guest = self.state.guests.get(int(vmid))
        if guest is None or guest["kind"] != kind:
            what = "VM" if kind == "qemu" else "CT"
            raise ApiError(
                500,
                f"Configuration file 'nodes/{self.state.node}/"
                f"{'qemu-server' if kind == 'qemu' else 'lxc'}/{vmid}.conf'"
                f" does not exist ({what} {vmid})",
            )
        return guest

    def _guest_summary(self, vmid: int) -> dict[str, Any]:
        guest = self.state.guests[vmid]
        config = guest["config"]
        memory = int(str(config.get("memory", "512")).split("=")[-1]) * 1024**2
        return {
            "vmid": vmid,
            "type": guest["kind"],
            "id": f"{guest['kind']}/{vmid}",
            "name": config.get("name") or config.get("hostname") or f"guest{vmid}",
            "status": guest["status"],
            "node": self.state.node,
            "maxmem": memory,
            "mem": memory // 4 if guest["status"] == "running" else 0,
            "maxcpu": int(config.get("cores", 1)),
            "cpu": 0.01,
            "uptime": 3600 if guest["status"] == "running" else 0,
            "maxdisk": 0,
            "disk": 0,
            "template": 0,
        }

    @staticmethod
    def _digest(config: Any) -> str:
        return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()

    def _check_token_pci(self, params: dict[str, Any], who: str) -> None:
        for key, value in params.items():
            if HOSTPCI_KEY.match(key) and "!" in who and "mapping=" not in str(value):
                raise ApiError(403, f"only root can set '{key}' config for non-mapped devices")

    def _allocate(
        self,
        vmid: int,
        kind: str,
        key: str,
        value: str,
        config: dict[str, Any],
    ) -> str:
        """A disk spec as given (``ssd:32``, ``ssd:0,import-from=...``) -> as stored."""
        parts = value.split(",")
        volume, options = parts[0], [p for p in parts[1:] if p]
        if volume.startswith("file="):
            volume = volume[5:]
        match = re.fullmatch(r"([a-z][a-z0-9\-_.]*[a-z0-9]):(\d+(?:\.\d+)?|cloudinit)", volume)
        if match is None:
            return value  # an existing volume or none/cdrom: kept as given
        storage, amount = match[1], match[2]
        self._need_storage(storage, "images" if kind == "qemu" else "rootdir")
        if amount == "cloudinit":
            volid = f"{storage}:vm-{vmid}-cloudinit"
            self.state.volumes[volid] = {"content": "images", "size": 4 * 1024**2, "vmid": vmid}
            return f"{volid},media=cdrom"
        used = {v for v in self.state.volumes if v.startswith(f"{storage}:vm-{vmid}-disk-")}
        n = 0
        while f"{storage}:vm-{vmid}-disk-{n}" in used:
            n += 1
        prefix = "subvol" if kind == "lxc" else "vm"
        volid = f"{storage}:{prefix}-{vmid}-disk-{n}"
        size = int(float(amount) * 1024**3)
        kept = []
        for option in options:
            if option.startswith("import-from="):
                source = option.split("=", 1)[1]
                if source not in self.state.volumes and not source.startswith("/"):
                    raise ApiError(500, f"import-from: volume '{source}' does not exist")
                size = self.state.volumes.get(source, {}).get("size", FAKE_VOLUME_SIZE)
            else:
                kept.append(option)
        if key == "efidisk0":
            size = 528 * 1024 if "efitype=4m" in options else 128 * 1024
        self.state.volumes[volid] = {
            "content": "images" if kind == "qemu" else "rootdir",
            "size": size,
            "vmid": vmid,
        }
        return ",".join([volid, *kept, f"size={size_text(size)}"])

    def _apply_config(
        self, vmid: int, kind: str, config: dict[str, Any], params: dict[str, Any]
    ) -> None:
        for key in _split_list(str(params.pop("delete", ""))):
            config.pop(key, None)
        digest = params.pop("digest", None)
        if digest is not None and digest != self._digest(config):
            raise ApiError(500, "detected modified configuration - file changed by other user?")
        for key, value in params.items():
            if key in (
                "node",
                "vmid",
                "start",
                "storage",
                "ostemplate",
                "password",
                "ssh-public-keys",
                "unprivileged",
                "skiplock",
                "background_delay",
                "restore",
                "unique",
            ):
                if key == "unprivileged":
                    config[key] = value
                continue
            if (kind == "qemu" and DISK_KEY.match(key)) or (
                kind == "lxc" and LXC_DISK_KEY.match(key)
            ):
                value = self._allocate(vmid, kind, key, str(value), config)
            if NET_KEY.match(key) and kind == "qemu":
                fields = parse_property_string({"model": {"default_key": 1}}, str(value))
                model = next(
                    (
                        m
                        for m in ("virtio", "e1000", "vmxnet3", "rtl8139")
                        if m in str(value).split(",")[0]
                    ),
                    None,
                )
                if model and "=" not in str(value).split(",")[0]:
                    mac = _random_mac()
                    rest = str(value).split(",")[1:]
                    value = ",".join([f"{model}={mac}", *rest])
                del fields
            if VIRTIOFS_KEY.match(key) and kind == "qemu":
                dirid = parse_property_string({"dirid": {"default_key": 1}}, str(value)).get(
                    "dirid", ""
                )
                if dirid not in self.state.dir_mappings:
                    raise ApiError(500, f"{key}: directory mapping '{dirid}' does not exist")
            if NET_KEY.match(key) and kind == "lxc" and "hwaddr=" not in str(value):
                mac = _random_mac()
                value = f"{value},hwaddr={mac}"
            config[key] = value
        keys = params.get("ssh-public-keys")
        if kind == "lxc" and keys and "rootfs" in config:
            # pve-container writes them into the new root's /root/.ssh/authorized_keys; they
            # are not part of the config. The volume keeps them (the lab reads them there).
            volid = str(config["rootfs"]).split(",")[0]
            self.state.volumes.setdefault(volid, {})["root_authorized_keys"] = str(keys)

    def _list_guests(self, kind: str) -> list:
        return [
            self._guest_summary(v)
            for v in sorted(self.state.guests)
            if self.state.guests[v]["kind"] == kind
        ]

    def _create_guest(self, kind: str, params: dict[str, Any], who: str) -> str:
        vmid = int(params["vmid"])
        if vmid in self.state.guests:
            raise ApiError(
                500,
                f"unable to create {'VM' if kind == 'qemu' else 'CT'} {vmid}:"
                f" config file already exists",
            )
        self._check_token_pci(params, who)

        def work() -> list[str]:
            config: dict[str, Any] = {}
            if kind == "lxc":
                template = str(params["ostemplate"])
                if template not in self.state.volumes:
                    raise ApiError(500, f"volume '{template}' does not exist")
                if str(params.get("restore", "0")) == "1":
                    config = self._restored_config(template, params)
                if "rootfs" not in params:
                    params["rootfs"] = f"{params.get('storage', 'local')}:4"
            self._apply_config(vmid, kind, config, dict(params))
            status = "running" if str(params.get("start", "0")) == "1" else "stopped"
            self.state.guests[vmid] = {
                "kind": kind,
                "config": config,
                "status": status,
                "snapshots": {},
            }
            return [f"created {kind} {vmid}"]

        return self.task("qmcreate" if kind == "qemu" else "vzcreate", str(vmid), who, work)

    def _restored_config(self, volid: str, params: dict[str, Any]) -> dict[str, Any]:
        """The config a restore starts from: the one the backup holds, its volumes left out
        (the restore allocates them anew on ``storage``); ``unique`` gives its NICs new MACs."""
        volume = self.state.volumes[volid]
        if volume.get("content") != "backup":
            raise ApiError(500, f"volume '{volid}' is not a backup archive")
        config = {
            k: v
            for k, v in dict(volume.get("config") or {}).items()
            # Bind mounts (a host path) stay, as pct restore keeps them; volumes are new.
            if not LXC_DISK_KEY.match(k) or str(v).startswith("/")
        }
        if str(params.get("unique", "0")) == "1":
            for key in [k for k in config if NET_KEY.match(k)]:
                fields = [f for f in str(config[key]).split(",") if not f.startswith("hwaddr=")]
                config[key] = ",".join([*fields, f"hwaddr={_random_mac()}"])
        return config

    def _destroy_guest(self, vmid: str, kind: str, params: dict[str, Any], who: str) -> str:
        guest = self._guest(vmid, kind)
        if guest["status"] == "running":
            what = "VM" if kind == "qemu" else "CT"
            raise ApiError(500, f"{what} {vmid} is running - destroy failed")

        def work() -> list[str]:
            del self.state.guests[int(vmid)]
            for volid in [
                v for v, volume in self.state.volumes.items()
                if str(volume.get("vmid")) == str(vmid) and volume.get("content") != "backup"
            ]:  # fmt: skip
                del self.state.volumes[volid]
            for job in self.state.backup_jobs.values():
                if str(params.get("purge", "0")) == "1" and "vmid" in job:
                    job["vmid"] = ",".join(v for v in _split_list(job["vmid"]) if v != str(vmid))
            return [f"destroyed {kind} {vmid}"]

        return self.task("qmdestroy" if kind == "qemu" else "vzdestroy", str(vmid), who, work)

    def post_nodes_node_vzdump(self, pp: dict, params: dict, who: str) -> str:
        """A backup of each guest named in ``vmid`` (or ``all``): an archive volume on
        ``storage`` that remembers the guest's config, as vzdump's archive holds it."""
        storage = str(params.get("storage", "local"))
        self._need_storage(storage, "backup")
        if str(params.get("all", "0")) == "1":
            vmids = sorted(self.state.guests)
        else:
            vmids = [int(v) for v in _split_list(params.get("vmid", ""))]
        for vmid in vmids:
            self._guest(vmid, self.state.guests.get(vmid, {}).get("kind", "lxc"))

        def work() -> list[str]:
            lines = []
            for vmid in vmids:
                guest = self.state.guests[vmid]
                now = time.time()
                while any(v.get("ctime") == int(now) and v.get("vmid") == vmid
                          for v in self.state.volumes.values()):  # fmt: skip
                    now += 1
                stamp = time.strftime("%Y_%m_%d-%H_%M_%S", time.gmtime(now))
                kind = "lxc" if guest["kind"] == "lxc" else "qemu"
                suffix = "tar.zst" if kind == "lxc" else "vma.zst"
                volid = f"{storage}:backup/vzdump-{kind}-{vmid}-{stamp}.{suffix}"
                self.state.volumes[volid] = {
                    "content": "backup",
                    "format": suffix,
                    "size": 200 * 1024**2,
                    "vmid": vmid,
                    "ctime": int(now),
                    "config": dict(guest["config"]),
                }
                lines.append(f"INFO: creating vzdump archive '{volid}'")
            return lines

        return self.task("vzdump", ",".join(map(str, vmids)) or "all", who, work)

    def _start_order(self) -> list[int]:
        """The guests in Proxmox's start order: by ``startup`` ``order=`` (none: last), then
        by ID; stopall goes the reverse way."""

        def order(vmid: int) -> tuple[float, int]:
            startup = str(self.state.guests[vmid]["config"].get("startup", ""))
            found = re.search(r"(?:^|,)order=(\d+)", startup)
            return (int(found[1]) if found else float("inf"), vmid)

        return sorted(self.state.guests, key=order)

    def post_nodes_node_stopall(self, pp: dict, params: dict, who: str) -> str:
        """Every running guest stopped, one after the other, in the reverse start order; each
        stop is a task of its own (``vzshutdown``/``qmshutdown``), in the order it ran."""
        wanted = set(int(v) for v in _split_list(params.get("vms", ""))) or None

        def work() -> list[str]:
            lines = []
            for vmid in reversed(self._start_order()):
                guest = self.state.guests[vmid]
                if guest["status"] != "running" or (wanted and vmid not in wanted):
                    continue
                kind = "qm" if guest["kind"] == "qemu" else "vz"
                self._set_status(str(vmid), guest["kind"], "stopped", who, f"{kind}shutdown")
                lines.append(f"Stopping {'VM' if kind == 'qm' else 'CT'} {vmid}")
            return lines

        return self.task("stopall", "", who, work)

    def post_nodes_node_startall(self, pp: dict, params: dict, who: str) -> str:
        """The guests with ``onboot`` (all with ``force``) started in the start order."""
        force = str(params.get("force", "0")) == "1"

        def work() -> list[str]:
            lines = []
            for vmid in self._start_order():
                guest = self.state.guests[vmid]
                onboot = str(guest["config"].get("onboot", "0")) == "1"
                if guest["status"] == "running" or not (onboot or force):
                    continue
                kind = "qm" if guest["kind"] == "qemu" else "vz"
                self._set_status(str(vmid), guest["kind"], "running", who, f"{kind}start")
                lines.append(f"Starting {'VM' if kind == 'qm' else 'CT'} {vmid}")
            return lines

        return self.task("startall", "", who, work)

    def _get_config(self, guest: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        if "snapshot" in params:
            snap = guest["snapshots"].get(params["snapshot"])
            if snap is None:
                raise ApiError(500, f"snapshot '{params['snapshot']}' does not exist")
            return dict(snap["config"])
        config = dict(guest["config"])
        config["digest"] = self._digest(guest["config"])
        if guest.get("parent"):
            config["parent"] = guest["parent"]
        return config

    def _status(self, vmid: str, kind: str) -> dict[str, Any]:
        guest = self._guest(vmid, kind)
        summary = self._guest_summary(int(vmid))
        summary["qmpstatus"] = guest["status"]
        if kind == "qemu" and "agent" in guest["config"]:
            summary["agent"] = 1
        return summary

    def _set_status(self, vmid: str, kind: str, status: str, who: str, task: str) -> str:
        guest = self._guest(vmid, kind)
        self._unlocked(guest, kind)

        def work() -> list[str]:
            guest["status"] = status
            return []

        return self.task(task, str(vmid), who, work)

    # snapshots (qemu and lxc alike)

    def _snapshots(self, vmid: str, kind: str) -> list:
        guest = self._guest(vmid, kind)
        out = [
            {
                "name": name,
                "description": s.get("description", ""),
                "snaptime": s["snaptime"],
                **({"parent": s["parent"]} if s.get("parent") else {}),
                **({"vmstate": 1} if s.get("vmstate") else {}),
            }
            for name, s in guest["snapshots"].items()
        ]
        out.append(
            {
                "name": "current",
                "description": "You are here!",
                **({"parent": guest["parent"]} if guest.get("parent") else {}),
                "running": int(guest["status"] == "running"),
            }
        )
        return out

    def _snapshot(self, vmid: str, kind: str, params: dict[str, Any], who: str) -> str:
        guest = self._guest(vmid, kind)
        self._unlocked(guest, kind)
        name = params["snapname"]
        if name in guest["snapshots"]:
            raise ApiError(500, f"snapshot name '{name}' already used")
        vmstate = str(params.get("vmstate", "0")) == "1"
        lab_host = self._lab_host(guest)
        if lab_host is not None and vmstate:
            raise ApiError(
                500,
                f"snapshot '{name}' with vmstate=1: the lab cannot save a container's RAM"
                f" (the lab's VM agent copies {lab_host}'s disks only)",
            )
        # Taken when asked, as Proxmox does (the guest is locked until the snapshot exists).
        config, status = copy.deepcopy(guest["config"]), guest["status"]

        def work() -> list[str]:
            if vmstate and status == "running":
                shares = [k for k in config if VIRTIOFS_KEY.match(k)]
                if shares:
                    # QEMU's vhost-user-fs device blocks migration, and so saving the RAM.
                    raise ApiError(500, f"{shares[0]}: VirtIO-FS device blocks saving the VM state")
            guest["snapshots"][name] = {
                "config": config,
                "snaptime": int(time.time()),
                "description": params.get("description", ""),
                "parent": guest.get("parent"),
                "vmstate": vmstate,
                "status": status,
            }
            guest["parent"] = name
            return [f"snapshot '{name}' created"]

        kind_name = "qmsnapshot" if kind == "qemu" else "vzsnapshot"
        return self._guest_task(
            guest, "snapshot", kind_name, str(vmid), who, work,
            None if lab_host is None else (lambda: self._ask_agent("snapshot", lab_host, name)),
        )  # fmt: skip

    def _delsnapshot(self, vmid: str, kind: str, name: str, who: str) -> str:
        guest = self._guest(vmid, kind)
        self._unlocked(guest, kind)
        if name not in guest["snapshots"]:
            raise ApiError(500, f"snapshot '{name}' does not exist")
        lab_host = self._lab_host(guest)

        def work() -> list[str]:
            snap = guest["snapshots"].pop(name)
            for other in guest["snapshots"].values():
                if other.get("parent") == name:
                    other["parent"] = snap.get("parent")
            if guest.get("parent") == name:
                guest["parent"] = snap.get("parent")
            return [f"snapshot '{name}' removed"]

        kind_name = "qmdelsnapshot" if kind == "qemu" else "vzdelsnapshot"
        return self._guest_task(
            guest, "snapshot-delete", kind_name, str(vmid), who, work,
            None if lab_host is None else (lambda: self._ask_agent("delete", lab_host, name)),
        )  # fmt: skip

    def _rollback(self, vmid: str, kind: str, name: str, params: dict[str, Any], who: str) -> str:
        guest = self._guest(vmid, kind)
        self._unlocked(guest, kind)
        if name not in guest["snapshots"]:
            raise ApiError(500, f"snapshot '{name}' does not exist")
        lab_host = self._lab_host(guest)
        start = str(params.get("start", "0")) == "1"
        if lab_host is not None and guest["snapshots"][name]["vmstate"]:
            raise ApiError(
                500, f"snapshot '{name}' holds RAM state, which the lab cannot restore ({lab_host})"
            )

        def work() -> list[str]:
            snap = guest["snapshots"][name]
            guest["config"] = copy.deepcopy(snap["config"])
            guest["parent"] = name
            running = snap["vmstate"] or start
            guest["status"] = "running" if running else "stopped"
            return [f"rolled back to snapshot '{name}'"]

        kind_name = "qmrollback" if kind == "qemu" else "vzrollback"
        return self._guest_task(
            guest, "rollback", kind_name, str(vmid), who, work,
            None if lab_host is None
            else (lambda: self._ask_agent("rollback", lab_host, name, start=start)),
        )  # fmt: skip

    # the lab's VM agent (tests/lab/vm_agent.py): real snapshots of lab hosts

    def _guest_task(
        self, guest: dict, lock: str, kind: str, ident: str, who: str, work: Any, agent: Any
    ) -> str:
        """A snapshot task: bookkeeping only, or in the background after the agent's work, with
        the guest locked (``lock``) until it has finished."""
        if agent is None:
            return self.task(kind, ident, who, work)
        upid = self.task(kind, ident, who, work, background=agent)
        guest["lock"] = {"lock": lock, "upid": upid}
        return upid

    def _unlocked(self, guest: dict[str, Any], kind: str) -> None:
        """Refuse while a snapshot task of the guest runs, as Proxmox does (``lock``)."""
        lock = guest.get("lock") or {}
        task = self.state.tasks.get(lock.get("upid", ""))
        if task is not None and task["exitstatus"] is None:
            raise ApiError(500, f"{'VM' if kind == 'qemu' else 'CT'} is locked ({lock['lock']})")

    def _lab_host(self, guest: dict[str, Any]) -> str | None:
        """The lab host the VM agent serves as ``guest``, or None (snapshots are records)."""
        if self.lab_vm_agent is None:
            return None
        name = guest["config"].get("name") or guest["config"].get("hostname")
        try:
            served = (self.lab_vm_agent / "guests").read_text().split()
        except OSError:
            return None
        return str(name) if name in served else None

    def _ask_agent(self, action: str, lab_host: str, snapshot: str, start: bool = False) -> list:
        """Hand the agent one request and wait for its reply (no lock held); its log lines.
        ApiError when it fails or gives no answer in ``agent_timeout``."""
        assert self.lab_vm_agent is not None
        ident = f"{time.time_ns():020d}-{secrets.token_hex(4)}"  # names sort by age
        requests, replies = self.lab_vm_agent / "requests", self.lab_vm_agent / "replies"
        requests.mkdir(parents=True, exist_ok=True)
        request = {
            "id": ident,
            "action": action,
            "guest": lab_host,
            "snapshot": snapshot,
            "start": start,
        }
        tmp = requests / f".{ident}.json.tmp"
        tmp.write_text(json.dumps(request))
        tmp.replace(requests / f"{ident}.json")
        reply_path = replies / f"{ident}.json"
        deadline = time.monotonic() + self.agent_timeout
        while not reply_path.exists():
            if time.monotonic() > deadline:
                (requests / f"{ident}.json").unlink(missing_ok=True)  # no late action
                try:
                    log = (self.lab_vm_agent / "log").read_text().strip()
                except OSError:
                    log = "vm-agent.log in the lab's log directory"
                raise ApiError(
                    500,
                    f"{action} {snapshot} of {lab_host}: the lab's VM agent gave no answer in"
                    f" {self.agent_timeout:.0f} s (request {ident}); see its log: {log}",
                )
            time.sleep(0.1)
        reply = json.loads(reply_path.read_text())
        reply_path.unlink(missing_ok=True)
        if not reply.get("ok"):
            raise ApiError(500, f"lab VM agent: {reply.get('error') or 'failed, no error given'}")
        return [str(line) for line in reply.get("lines", [])]

    # --- qemu ---------------------------------------------------------------------------

    def get_nodes_node_qemu(self, pp: dict, params: dict, who: str) -> list:
        return self._list_guests("qemu")

    def post_nodes_node_qemu(self, pp: dict, params: dict, who: str) -> str:
        return self._create_guest("qemu", params, who)

    def get_nodes_node_qemu_vmid_config(self, pp: dict, params: dict, who: str) -> dict:
        return self._get_config(self._guest(pp["vmid"], "qemu"), params)

    def post_nodes_node_qemu_vmid_config(self, pp: dict, params: dict, who: str) -> str:
        guest = self._guest(pp["vmid"], "qemu")
        self._check_token_pci(params, who)

        def work() -> list[str]:
            self._apply_config(int(pp["vmid"]), "qemu", guest["config"], dict(params))
            return ["update VM config"]

        return self.task("qmconfig", pp["vmid"], who, work)

    def put_nodes_node_qemu_vmid_config(self, pp: dict, params: dict, who: str) -> None:
        guest = self._guest(pp["vmid"], "qemu")
        self._check_token_pci(params, who)
        self._apply_config(int(pp["vmid"]), "qemu", guest["config"], dict(params))

    def put_nodes_node_qemu_vmid_resize(self, pp: dict, params: dict, who: str) -> str:
        guest = self._guest(pp["vmid"], "qemu")
        disk = params["disk"]
        if disk not in guest["config"]:
            raise ApiError(500, f"disk '{disk}' does not exist")

        def work() -> list[str]:
            spec = str(guest["config"][disk])
            current = re.search(r"size=(\d+[KMGT]?)", spec)
            have = size_bytes(current[1]) if current else 0
            wanted = params["size"]
            new = have + size_bytes(wanted[1:]) if wanted.startswith("+") else size_bytes(wanted)
            if new < have:
                raise ApiError(500, "shrinking disks is not supported")
            spec = re.sub(r"size=\d+[KMGT]?", f"size={size_text(new)}", spec)
            guest["config"][disk] = spec
            volid = spec.split(",")[0]
            if volid in self.state.volumes:
                self.state.volumes[volid]["size"] = new
            return [f"resized {disk} to {size_text(new)}"]

        return self.task("resize", pp["vmid"], who, work)

    def get_nodes_node_qemu_vmid_status_current(self, pp: dict, params: dict, who: str) -> dict:
        return self._status(pp["vmid"], "qemu")

    def post_nodes_node_qemu_vmid_status_start(self, pp: dict, params: dict, who: str) -> str:
        return self._set_status(pp["vmid"], "qemu", "running", who, "qmstart")

    def post_nodes_node_qemu_vmid_status_stop(self, pp: dict, params: dict, who: str) -> str:
        return self._set_status(pp["vmid"], "qemu", "stopped", who, "qmstop")

    def post_nodes_node_qemu_vmid_status_shutdown(self, pp: dict, params: dict, who: str) -> str:
        return self._set_status(pp["vmid"], "qemu", "stopped", who, "qmshutdown")

    def get_nodes_node_qemu_vmid_snapshot(self, pp: dict, params: dict, who: str) -> list:
        return self._snapshots(pp["vmid"], "qemu")

    def post_nodes_node_qemu_vmid_snapshot(self, pp: dict, params: dict, who: str) -> str:
        return self._snapshot(pp["vmid"], "qemu", params, who)

    def delete_nodes_node_qemu_vmid_snapshot_snapname(
        self,
        pp: dict,
        params: dict,
        who: str,
    ) -> str:
        return self._delsnapshot(pp["vmid"], "qemu", pp["snapname"], who)

    def post_nodes_node_qemu_vmid_snapshot_snapname_rollback(
        self, pp: dict, params: dict, who: str
    ) -> str:
        return self._rollback(pp["vmid"], "qemu", pp["snapname"], params, who)

    # --- lxc ----------------------------------------------------------------------------

    def get_nodes_node_lxc(self, pp: dict, params: dict, who: str) -> list:
        return self._list_guests("lxc")

    def post_nodes_node_lxc(self, pp: dict, params: dict, who: str) -> str:
        return self._create_guest("lxc", params, who)

    def delete_nodes_node_lxc_vmid(self, pp: dict, params: dict, who: str) -> str:
        return self._destroy_guest(pp["vmid"], "lxc", params, who)

    def get_nodes_node_lxc_vmid_config(self, pp: dict, params: dict, who: str) -> dict:
        return self._get_config(self._guest(pp["vmid"], "lxc"), params)

    def put_nodes_node_lxc_vmid_config(self, pp: dict, params: dict, who: str) -> None:
        guest = self._guest(pp["vmid"], "lxc")
        self._apply_config(int(pp["vmid"]), "lxc", guest["config"], dict(params))

    def get_nodes_node_lxc_vmid_status_current(self, pp: dict, params: dict, who: str) -> dict:
        return self._status(pp["vmid"], "lxc")

    def post_nodes_node_lxc_vmid_status_start(self, pp: dict, params: dict, who: str) -> str:
        return self._set_status(pp["vmid"], "lxc", "running", who, "vzstart")

    def post_nodes_node_lxc_vmid_status_stop(self, pp: dict, params: dict, who: str) -> str:
        return self._set_status(pp["vmid"], "lxc", "stopped", who, "vzstop")

    def get_nodes_node_lxc_vmid_snapshot(self, pp: dict, params: dict, who: str) -> list:
        return self._snapshots(pp["vmid"], "lxc")

    def post_nodes_node_lxc_vmid_snapshot(self, pp: dict, params: dict, who: str) -> str:
        return self._snapshot(pp["vmid"], "lxc", params, who)

    def delete_nodes_node_lxc_vmid_snapshot_snapname(
        self,
        pp: dict,
        params: dict,
        who: str,
    ) -> str:
        return self._delsnapshot(pp["vmid"], "lxc", pp["snapname"], who)

    def post_nodes_node_lxc_vmid_snapshot_snapname_rollback(
        self, pp: dict, params: dict, who: str
    ) -> str:
        return self._rollback(pp["vmid"], "lxc", pp["snapname"], params, who)

    # --- backup jobs and PCI mappings ---------------------------------------------------

    def get_cluster_backup(self, pp: dict, params: dict, who: str) -> list:
        return [dict(job) for job in self.state.backup_jobs.values()]

    def post_cluster_backup(self, pp: dict, params: dict, who: str) -> None:
        job_id = params.get("id") or f"backup-{secrets.token_hex(4)}-{secrets.token_hex(2)}"
        if job_id in self.state.backup_jobs:
            raise ApiError(500, f"Job ID '{job_id}' already exists")
        if "storage" in params:
            self._need_storage(params["storage"], "backup")
        self.state.backup_jobs[job_id] = {**params, "id": job_id, "type": "vzdump"}

    def get_cluster_backup_id(self, pp: dict, params: dict, who: str) -> dict:
        if pp["id"] not in self.state.backup_jobs:
            raise ApiError(500, f"job '{pp['id']}' does not exist")
        return dict(self.state.backup_jobs[pp["id"]])

    def put_cluster_backup_id(self, pp: dict, params: dict, who: str) -> None:
        job = self.state.backup_jobs.get(pp["id"])
        if job is None:
            raise ApiError(500, f"job '{pp['id']}' does not exist")
        if "storage" in params:
            self._need_storage(params["storage"], "backup")
        for key in _split_list(params.pop("delete", "")):
            job.pop(key, None)
        job.update(params)

    def delete_cluster_backup_id(self, pp: dict, params: dict, who: str) -> None:
        if self.state.backup_jobs.pop(pp["id"], None) is None:
            raise ApiError(500, f"job '{pp['id']}' does not exist")

    def get_cluster_mapping_pci(self, pp: dict, params: dict, who: str) -> list:
        return [dict(m) for m in self.state.pci_mappings.values()]

    def post_cluster_mapping_pci(self, pp: dict, params: dict, who: str) -> None:
        if params["id"] in self.state.pci_mappings:
            raise ApiError(500, f"mapping '{params['id']}' already exists")
        self.state.pci_mappings[params["id"]] = {
            **params,
            "type": "pci",
            "map": _as_list(params["map"]),
        }

    def get_cluster_mapping_pci_id(self, pp: dict, params: dict, who: str) -> dict:
        if pp["id"] not in self.state.pci_mappings:
            raise ApiError(500, f"mapping '{pp['id']}' does not exist")
        return dict(self.state.pci_mappings[pp["id"]])

    def put_cluster_mapping_pci_id(self, pp: dict, params: dict, who: str) -> None:
        mapping = self.state.pci_mappings.get(pp["id"])
        if mapping is None:
            raise ApiError(500, f"mapping '{pp['id']}' does not exist")
        params.pop("digest", None)
        for key in _split_list(params.pop("delete", "")):
            mapping.pop(key, None)
        if "map" in params:
            params["map"] = _as_list(params["map"])
        mapping.update(params)

    def get_cluster_mapping_dir(self, pp: dict, params: dict, who: str) -> list:
        return [dict(m) for m in self.state.dir_mappings.values()]

    def post_cluster_mapping_dir(self, pp: dict, params: dict, who: str) -> None:
        if params["id"] in self.state.dir_mappings:
            raise ApiError(500, f"mapping '{params['id']}' already exists")
        self.state.dir_mappings[params["id"]] = {
            **params,
            "type": "dir",
            "map": _as_list(params["map"]),
        }

    def get_cluster_mapping_dir_id(self, pp: dict, params: dict, who: str) -> dict:
        if pp["id"] not in self.state.dir_mappings:
            raise ApiError(500, f"mapping '{pp['id']}' does not exist")
        return dict(self.state.dir_mappings[pp["id"]])

    def put_cluster_mapping_dir_id(self, pp: dict, params: dict, who: str) -> None:
        mapping = self.state.dir_mappings.get(pp["id"])
        if mapping is None:
            raise ApiError(500, f"mapping '{pp['id']}' does not exist")
        params.pop("digest", None)
        for key in _split_list(params.pop("delete", "")):
            mapping.pop(key, None)
        if "map" in params:
            params["map"] = _as_list(params["map"])
        mapping.update(params)


def _is_mountpoint(path: str) -> bool:
    """Whether something is mounted at ``path`` (bind mounts too, as ``mountpoint`` says)."""
    target = os.path.realpath(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return os.path.ismount(target)
    points = {line.split()[4].replace("\\040", " ") for line in lines if len(line.split()) > 4}
    return target in points


def _random_mac() -> str:
    """A MAC in Proxmox's own prefix (BC:24:11), as a new NIC gets."""
    return "BC:24:11:" + ":".join(f"{b:02X}" for b in secrets.token_bytes(3))


def _split_list(text: Any) -> list[str]:
    return [part for part in re.split(r"[,;\s]+", str(text or "")) if part]


def _as_list(value: Any) -> list[str]:
    return list(value) if isinstance(value, list) else [str(value)]


class _Handler(BaseHTTPRequestHandler):
    api: PveApiDouble
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("PVE_API_DOUBLE_LOG"):
            super().log_message(format, *args)

    def _params(self) -> tuple[str, dict[str, Any]]:
        url = urlsplit(self.path)
        raw = parse_qs(url.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            body = self.rfile.read(length).decode()
            if self.headers.get("Content-Type", "").startswith("application/json"):
                for key, value in json.loads(body or "{}").items():
                    if isinstance(value, bool):
                        value = int(value)
                    raw[key] = value if isinstance(value, list) else [value]
            else:
                for key, values in parse_qs(body, keep_blank_values=True).items():
                    raw.setdefault(key, []).extend(values)
        params: dict[str, Any] = {}
        for key, values in raw.items():
            params[key] = values if len(values) > 1 or key == "map" else values[0]
        return url.path, params

    def _serve(self, method: str) -> None:
        path, params = self._params()
        prefix = "/api2/json"
        if not path.startswith(prefix + "/"):
            self._reply(501, {"data": None, "message": f"Method '{path}' not implemented"})
            return
        api_path = path[len(prefix) :].rstrip("/") or "/"
        try:
            data = self.api.handle(method, api_path, params, self.headers)
        except ApiError as error:
            body: dict[str, Any] = {"data": None, "message": error.message}
            if error.errors:
                body["errors"] = error.errors
            self._reply(error.status, body, reason=error.message)
            return
        except Exception as error:  # a bug in the double: say so, as a 500
            self._reply(500, {"data": None, "message": f"test double error: {error!r}"})
            return
        self._reply(200, {"data": data})

    def _reply(self, status: int, body: dict[str, Any], reason: str | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status, ((reason or "").splitlines() or [""])[0][:200] or None)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Proxmox VE API test double (HTTPS).")
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8006)
    parser.add_argument("--cert", type=Path, required=True, help="PEM certificate (+ key)")
    parser.add_argument("--key", type=Path, help="PEM private key")
    parser.add_argument("--node", default=os.uname().nodename.split(".")[0])
    parser.add_argument("--address", default="127.0.0.1", help="the node's address")
    parser.add_argument("--version", type=int, choices=(8, 9), default=9)
    parser.add_argument("--password-file", type=Path, help="root@pam's password (file)")
    parser.add_argument("--token-file", type=Path, help="lines USER@REALM!TOKENID=SECRET")
    parser.add_argument("--state-file", type=Path, help="keep the state here across restarts")
    parser.add_argument(
        "--lab-vm-agent",
        type=Path,
        metavar="DIR",
        help="the lab's VM agent exchange: real snapshots of the lab hosts listed in DIR/guests",
    )
    args = parser.parse_args(argv)
    password = args.password_file.read_text().strip() if args.password_file else None
    tokens = {}
    if args.token_file:
        for line in args.token_file.read_text().splitlines():
            if "=" in line:
                name, secret = line.strip().split("=", 1)
                tokens[name] = secret
    double = PveApiDouble(
        node=args.node,
        address=args.address,
        version=args.version,
        password=password,
        tokens=tokens,
        state_file=args.state_file,
        check_paths=True,
        lab_vm_agent=args.lab_vm_agent,
    )
    port = double.start(args.bind, args.port, args.cert, args.key)
    print(f"Proxmox VE API test double (schema v{args.version}) on {args.bind}:{port}", flush=True)
    assert double.thread is not None
    double.thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
