"""The hypervisor's guests through the Proxmox API: the ageis-node VM and the LXC service guests.

Every inventory host whose ``guest.hypervisor`` is this host is made here, from its ``guest``
spec. A guest that does not exist is created (and started); one that exists is never recreated
or deleted: only the config keys that drifted from the data are set again (``cores`` changed in
the data updates ``cores`` and nothing else).

VM (``kind: qemu``): ``q35``, OVMF with an ``efidisk0`` (4m, no pre-enrolled keys), ``cpu:
host``, cores, memory, ballooning off, the system disk on the guest's storage imported from a
cloud image and grown to ``disk_size``, a virtio NIC on the bridge, the GPU as ``hostpci0`` with
``pcie=1`` (all its functions: as root@pam the host's PCI address, with an API token through a
PCI resource mapping named after the GPU), the QEMU guest agent, start at boot with its start
order, and with ``share_pool`` a virtiofs share (``virtiofs0``) of the directory mapping
``<guest>-<pool>`` (``tasks/common/shares.py``; the directory is ``guest_shares``'s).
The guest OS comes from the cloud image by cloud-init: user ``admin_user`` of the guest,
its ``admin_ssh_public_key_files``, its ``lan_address`` on the LAN, no package upgrade on first
boot (``ciupgrade=0``: it would race the rollout's apt). Every guest's resolver at creation is the
gateway (or ``proxmox_guest_nameserver``), never the dns guest, which does not exist yet on a
first install; ``resolver_client`` puts the dns guest first later.
The cloud image is downloaded by the node itself (``download-url``, checksum verified) into the
storage with ``import`` content, once.

LXC (``kind: lxc``): unprivileged, from the Debian template of the storage with ``vztmpl``
content (downloaded through the node's appliance index when missing), root disk on the guest's
storage, NIC on the bridge with the guest's address, the admin's SSH keys for root.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

from pyinfra import host, logger, state
from pyinfra.api import deploy

from tasks.base.admin_user import DATA as ADMIN
from tasks.common.datamodel.forms import Field, IPv4Address, MapOf, Optional, Predicate, Str, Struct
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import HYPERVISOR
from tasks.common.shares import share_host_path, share_id
from tasks.hypervisor.proxmox_api import (
    Proxmox,
    ProxmoxError,
    api_change,
    diff,
    get_or_none,
    guests_of,
    reach,
)

OS_NAME = Str(choices=("ubuntu-24.04", "debian-13", "debian-12"))
CLOUD_IMAGE_FIELDS = Struct(
    {
        "url": Field(Str(r"https?://\S+", what="an http(s) URL")),
        "file": Field(Str(r"[A-Za-z0-9._-]+\.(qcow2|raw|img)", what='a file name, "x.qcow2"')),
        "sha256": Field(
            Optional(Str(r"[0-9a-f]{64}", what="a SHA-256, 64 hex digits")), required=False
        ),
        # Debian publishes SHA512SUMS only for its cloud images; Ubuntu SHA256SUMS.
        "sha512": Field(
            Optional(Str(r"[0-9a-f]{128}", what="a SHA-512, 128 hex digits")), required=False
        ),
    },
    what="a cloud image",
)
CLOUD_IMAGE = Predicate(
    CLOUD_IMAGE_FIELDS,
    lambda image: not (image["sha256"] and image["sha512"]),
    f"{CLOUD_IMAGE_FIELDS.description}, with at most one of sha256 and sha512",
)

DATA = Schema(
    "proxmox_guests",
    Key(
        "proxmox_cloud_images",
        MapOf(OS_NAME, CLOUD_IMAGE),
        {
            "ubuntu-24.04": {
                "url": "https://cloud-images.ubuntu.com/releases/noble/release/"
                "ubuntu-24.04-server-cloudimg-amd64.img",
                "file": "ubuntu-24.04-server-cloudimg-amd64.qcow2",
                "sha256": None,
            },
            "debian-13": {
                "url": "https://cloud.debian.org/images/cloud/trixie/latest/"
                "debian-13-genericcloud-amd64.qcow2",
                "file": "debian-13-genericcloud-amd64.qcow2",
                "sha256": None,
            },
        },
        "Cloud image per guest OS for VMs: url, file (name in the import storage), sha256 or"
        " sha512 (pin one, from the image's SHA256SUMS/SHA512SUMS, with a dated url: the node"
        " checks the download; none downloads unchecked, with a warning).",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_lxc_templates",
        MapOf(OS_NAME, Str(r"[A-Za-z0-9._-]+\.tar\.(zst|gz|xz)", what="a template file name")),
        {"debian-13": "debian-13-standard_13.1-2_amd64.tar.zst"},
        "LXC template per guest OS (from the Proxmox appliance index, `pveam available`).",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_guest_gateway",
        Optional(IPv4Address()),
        None,
        "Default gateway of the guests; None: the first address of lan_cidr.",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_guest_nameserver",
        Optional(IPv4Address()),
        None,
        "DNS server a guest gets at creation; None: the gateway. It must answer before any"
        " guest exists (the router, not the dns guest); the resolver task puts the dns guest"
        " first once the guest is up.",
        (HYPERVISOR,),
    ),
)


def _storage_with(api: Proxmox, content: str, what: str) -> str:
    """The pool (storage) of this hypervisor's data whose content includes ``content``."""
    for name, pool in sorted((host.data.get("pools") or {}).items()):
        if content in (pool.get("content") or []):
            return str(name)
    raise ProxmoxError(
        f"host {host.name!r}: no pool of this hypervisor has content {content!r} for {what};"
        f" add {content!r} to the content of a pool (the HDD pool) in the inventory"
    )


def _offered_template(api: Proxmox, template: str, os_name: str) -> None:
    """Stop before any change when the appliance index does not offer ``template``: Proxmox
    lists only current builds (`pveam available`), so a pinned name goes stale over time."""
    offered = sorted(str(item.get("template")) for item in api.get(f"nodes/{api.node}/aplinfo"))
    if template in offered:
        return
    family = template.split("_", 1)[0]
    same = [name for name in offered if name.split("_", 1)[0] == family] or offered
    raise ProxmoxError(
        f"host {host.name!r}: key 'proxmox_lxc_templates' gives {template!r} for {os_name!r},"
        f" which the Proxmox appliance index does not offer; expected one it offers:"
        f" {', '.join(same) or 'none (run `pveam update` on the node)'}"
    )


def _volume(api: Proxmox, storage: str, content: str, name: str) -> bool:
    # Volumes this run already plans to download (two containers, one template: once).
    planned = getattr(state, "homelab_planned_volumes", None)
    if planned is None:
        planned = set()
        state.homelab_planned_volumes = planned
    if (host.name, storage, name) in planned:
        return True
    planned.add((host.name, storage, name))
    path = f"nodes/{api.node}/storage/{storage}/content"
    listing = get_or_none(api, path, content=content) or []
    return any(str(v.get("volid", "")).endswith(f"/{name}") for v in listing)


def startup(spec: Mapping[str, Any]) -> str:
    """Proxmox's ``startup`` property: the boot order, and the wait after this guest's start."""
    delay = spec.get("start_delay") or 0
    return f"order={spec['start_order']}" + (f",up={delay}" if delay else "")


def _mib(size: int) -> int:
    return size // 1024**2


def _gib(size: int) -> int:
    return max(1, size // 1024**3)


def lan_gateway(settings: Any, lan: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """The LAN's gateway: ``proxmox_guest_gateway``, or the first address of ``lan``."""
    return str(settings.proxmox_guest_gateway or next(lan.hosts()))


def _network(settings: Any, guest_data: Any) -> tuple[str, str, str]:
    lan = ipaddress.ip_network(str(host.data.get("lan_cidr")), strict=False)
    gateway = lan_gateway(settings, lan)
    # Not the dns guest: on a first install it does not exist yet when the other guests boot
    # and install their packages. resolver_client puts it first once it answers.
    nameserver = settings.proxmox_guest_nameserver or gateway
    address = f"{guest_data.get('lan_address')}/{lan.prefixlen}"
    return address, gateway, str(nameserver)


def _hostpci(api: Proxmox, spec: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """hostpci0 for the guest's GPU, and the PCI mapping it needs (API token only)."""
    gpu_name = spec.get("passthrough_gpu")
    if not gpu_name:
        return None, None
    gpus = {g["name"]: g for g in host.data.get("gpus") or []}
    gpu = gpus.get(gpu_name)
    if gpu is None:
        raise ProxmoxError(
            f"host {host.name!r}: a guest's passthrough_gpu {gpu_name!r} is not one of this"
            f" hypervisor's gpus ({', '.join(gpus) or 'none'})"
        )
    addresses = [f["address"] for f in gpu["functions"] if f.get("address")]
    device = addresses[0].rsplit(".", 1)[0]  # 0000:03:00: every function of the card
    if not api.token:
        return f"{device},pcie=1", None
    first = gpu["functions"][0]
    mapping = {
        "id": gpu_name,
        "map": [f"node={api.node},path={device},id={first['id']}"],
        "description": gpu["model"],
    }
    return f"mapping={gpu_name},pcie=1", mapping


def _ensure_mapping(api: Proxmox, mapping: dict[str, Any]) -> None:
    current = get_or_none(api, f"cluster/mapping/pci/{mapping['id']}")
    if current is None:
        api_change(
            f"PCI resource mapping {mapping['id']}",
            [f"create {mapping['map'][0]}"],
            lambda: api.call("POST", "cluster/mapping/pci", "PCI mapping", **mapping),
        )
        return
    have = current.get("map") or []
    have = have if isinstance(have, list) else [have]
    changes = [] if sorted(have) == sorted(mapping["map"]) else [f"map={mapping['map'][0]}"]
    api_change(
        f"PCI resource mapping {mapping['id']}",
        changes,
        lambda: api.call(
            "PUT", f"cluster/mapping/pci/{mapping['id']}", "PCI mapping", map=mapping["map"]
        ),
    )


def _share(api: Proxmox, name: str, spec: dict[str, Any]) -> str | None:
    """``virtiofs0`` for the guest's shared pool, after its directory mapping is in place
    (Proxmox refuses a ``virtiofs`` key that names no mapping)."""
    pool_name = spec.get("share_pool")
    if not pool_name:
        return None
    pool = (host.data.get("pools") or {})[pool_name]
    mapping_id = share_id(name, pool_name)
    wanted = f"node={api.node},path={share_host_path(pool['path'], name)}"
    current = get_or_none(api, f"cluster/mapping/dir/{mapping_id}")
    if current is None:
        api_change(
            f"Directory mapping {mapping_id}",
            [f"create {wanted}"],
            lambda: api.call(
                "POST",
                "cluster/mapping/dir",
                "directory mapping",
                id=mapping_id,
                map=[wanted],
                description=f"{pool_name} pool share of {name} (homelab)",
            ),
        )
    else:
        have = current.get("map") or []
        have = have if isinstance(have, list) else [have]
        api_change(
            f"Directory mapping {mapping_id}",
            [] if wanted in have else [f"map={wanted}"],
            lambda: api.call(
                "PUT", f"cluster/mapping/dir/{mapping_id}", "directory mapping", map=[wanted]
            ),
        )
    # cache=auto: metadata cached briefly; the host's tier-down and the guest see each
    # other's changes within a second.
    return f"{mapping_id},cache=auto"


def _encoded(values: dict[str, Any]) -> dict[str, Any]:
    """Config values as the API takes them: ``sshkeys`` URL-encoded."""
    out = dict(values)
    if "sshkeys" in out:
        out["sshkeys"] = quote(out["sshkeys"], safe="")
    return out


def _normal(key: str, value: Any) -> str:
    text = str(value)
    if key == "agent" and text in ("1", "enabled=1"):
        return "enabled=1"
    if key == "sshkeys":
        return unquote(text).strip()
    if key == "memory" and text.startswith("current="):
        return text.split("=", 1)[1]
    return text


def _net_matches(current: str, model: str, bridge: str) -> bool:
    parts = dict(p.split("=", 1) for p in current.split(",") if "=" in p)
    return model in parts and parts.get("bridge") == bridge


def _qemu(api: Proxmox, settings: Any, name: str, spec: dict[str, Any], data: Any) -> None:
    vmid = spec["vmid"]
    path = f"nodes/{api.node}/qemu/{vmid}"
    admin = ADMIN.read(_DataView(name, data))
    address, gateway, nameserver = _network(settings, data)
    hostpci, mapping = _hostpci(api, spec)
    if mapping is not None:
        _ensure_mapping(api, mapping)
    wanted: dict[str, Any] = {
        "name": name,
        "machine": "q35",
        "bios": "ovmf",
        "cpu": "host",
        "cores": spec["cores"],
        "sockets": 1,
        "memory": _mib(spec["memory"]),
        "balloon": 0,
        "scsihw": "virtio-scsi-single",
        "ostype": "l26",
        "agent": "enabled=1",
        "onboot": 1,
        "startup": startup(spec),
        "boot": "order=scsi0",
        "ciuser": admin.admin_user,
        "sshkeys": "\n".join(admin.admin_ssh_public_key_files),
        "ipconfig0": f"ip={address},gw={gateway}",
        "nameserver": nameserver,
        "searchdomain": data.get("domain", "home.arpa"),
        # No package upgrade by cloud-init on first boot: it would race the rollout's apt, and
        # unattended-upgrades (security_updates) owns upgrades.
        "ciupgrade": 0,
    }
    if hostpci:
        wanted["hostpci0"] = hostpci
    share = _share(api, name, spec)
    if share:
        wanted["virtiofs0"] = share
    net = f"virtio,bridge={spec['bridge']}"

    current = get_or_none(api, f"{path}/config")
    if current is None:
        images = settings.proxmox_cloud_images
        image = images.get(spec["os"])
        if image is None:
            raise ProxmoxError(
                f"host {host.name!r}: key 'proxmox_cloud_images' has no image for {spec['os']!r}"
                f" (guest {name}); expected an entry {{url, file, sha256 or sha512}} for it"
            )
        store = _storage_with(api, "import", f"the cloud image of {name}")
        if not _volume(api, store, "import", image["file"]):
            pinned = [a for a in ("sha512", "sha256") if image.get(a)]  # one at most (DATA)
            checksum = (
                {"checksum": image[pinned[0]], "checksum-algorithm": pinned[0]} if pinned else {}
            )
            if not checksum:
                logger.warning(
                    f"{host.name}: the cloud image for {spec['os']} has no sha256/sha512 in"
                    " proxmox_cloud_images: it is downloaded unverified; pin the checksum"
                    " from the image's SHA256SUMS or SHA512SUMS"
                )
            api_change(
                f"Cloud image {image['file']} on {store}",
                [f"download {image['url']}"],
                lambda: api.call(
                    "POST",
                    f"nodes/{api.node}/storage/{store}/download-url",
                    f"download of {image['file']}",
                    url=image["url"],
                    filename=image["file"],
                    content="import",
                    **checksum,
                ),
            )
        storage = spec["storage"]

        def create() -> None:
            api.call(
                "POST",
                f"nodes/{api.node}/qemu",
                f"creating VM {vmid} ({name})",
                vmid=vmid,
                efidisk0=f"{storage}:1,efitype=4m,pre-enrolled-keys=0",
                scsi0=f"{storage}:0,import-from={store}:import/{image['file']},discard=on,"
                "iothread=1",
                ide2=f"{storage}:cloudinit",
                net0=net,
                serial0="socket",
                **_encoded(wanted),
            )
            api.call(
                "PUT",
                f"{path}/resize",
                f"growing VM {vmid}'s disk",
                disk="scsi0",
                size=f"{_gib(spec['disk_size'])}G",
            )
            api.call("POST", f"{path}/status/start", f"starting VM {vmid}")

        api_change(f"VM {vmid} ({name})", [f"create ({spec['cores']} cores)"], create)
        return
    _update_qemu(api, path, name, spec, current, wanted, net)


def _update_qemu(
    api: Proxmox,
    path: str,
    name: str,
    spec: dict[str, Any],
    current: dict[str, Any],
    wanted: dict[str, Any],
    net: str,
) -> None:
    """Set again only the keys of an existing VM that drifted from the data."""
    vmid = spec["vmid"]
    changed = {
        key: value
        for key, value in wanted.items()
        if _normal(key, current.get(key, "")) != _normal(key, value)
    }
    if not _net_matches(str(current.get("net0", "")), "virtio", spec["bridge"]):
        changed["net0"] = net
    shown = [f"{k}={'(keys)' if k == 'sshkeys' else v}" for k, v in sorted(changed.items())]
    if "virtiofs0" in changed and str(current.get("virtiofs0", "")) == "":
        logger.warning(
            f"{host.name}: VM {vmid} ({name}) gets its share ({changed['virtiofs0']}) at its"
            f" next start: Proxmox adds a virtiofs device only then (qm reboot {vmid})"
        )
    api_change(
        f"VM {vmid} ({name}) config",
        shown,
        lambda: api.call("POST", f"{path}/config", f"VM {vmid} config", **_encoded(changed)),
    )


def _lxc(api: Proxmox, settings: Any, name: str, spec: dict[str, Any], data: Any) -> None:
    vmid = spec["vmid"]
    path = f"nodes/{api.node}/lxc/{vmid}"
    address, gateway, nameserver = _network(settings, data)
    net = f"name=eth0,bridge={spec['bridge']},ip={address},gw={gateway}"
    wanted: dict[str, Any] = {
        "hostname": name,
        "cores": spec["cores"],
        "memory": _mib(spec["memory"]),
        "swap": 512,
        "onboot": 1,
        "startup": startup(spec),
        "nameserver": nameserver,
        "searchdomain": data.get("domain", "home.arpa"),
    }
    current = get_or_none(api, f"{path}/config")
    if current is None:
        template = settings.proxmox_lxc_templates.get(spec["os"])
        if template is None:
            raise ProxmoxError(
                f"host {host.name!r}: key 'proxmox_lxc_templates' has no template for"
                f" {spec['os']!r} (guest {name})"
            )
        store = _storage_with(api, "vztmpl", f"the template of {name}")
        if not _volume(api, store, "vztmpl", template):
            _offered_template(api, template, spec["os"])
            api_change(
                f"LXC template {template} on {store}",
                ["download from the Proxmox appliance index"],
                lambda: api.call(
                    "POST",
                    f"nodes/{api.node}/aplinfo",
                    f"download of {template}",
                    storage=store,
                    template=template,
                ),
            )
        admin = ADMIN.read(_DataView(name, data))
        storage = spec["storage"]
        api_change(
            f"Container {vmid} ({name})",
            [f"create ({spec['cores']} cores)"],
            lambda: api.call(
                "POST",
                f"nodes/{api.node}/lxc",
                f"creating container {vmid} ({name})",
                vmid=vmid,
                ostemplate=f"{store}:vztmpl/{template}",
                rootfs=f"{storage}:{_gib(spec['disk_size'])}",
                net0=net,
                unprivileged=1,
                features="nesting=1",
                start=1,
                **{"ssh-public-keys": "\n".join(admin.admin_ssh_public_key_files)},
                **wanted,
            ),
        )
        return
    changed = diff(current, wanted)
    have_net = dict(p.split("=", 1) for p in str(current.get("net0", "")).split(",") if "=" in p)
    want_net = dict(p.split("=", 1) for p in net.split(","))
    if any(have_net.get(k) != v for k, v in want_net.items()):
        if "hwaddr" in have_net:
            net = f"{net},hwaddr={have_net['hwaddr']}"
        changed["net0"] = net
    api_change(
        f"Container {vmid} ({name}) config",
        [f"{k}={v}" for k, v in sorted(changed.items())],
        lambda: api.call("PUT", f"{path}/config", f"container {vmid} config", **changed),
    )


class _DataView:
    """Another inventory host's data, for reading its keys with a Schema."""

    def __init__(self, name: str, data: Any) -> None:
        self.name = name
        self.data = data


@deploy("Proxmox guests", data_defaults=DATA.defaults())
def proxmox_guests() -> None:
    settings = DATA.read(host)
    api = reach("Proxmox guests")
    if api is None:
        return
    for name, spec, data in guests_of(host.name):
        if spec["kind"] == "qemu":
            _qemu(api, settings, name, spec, data)
        else:
            _lxc(api, settings, name, spec, data)
