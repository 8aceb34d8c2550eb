"""Check Proxmox VE API requests against the real API schema (part of the API test double).

Test double support: the schema is Proxmox's own machine-readable API description
(``apidata-v9.json`` / ``apidata-v8.json`` in ``../shared/reference/pve-api/``). A request is
accepted only when its path and method exist there and every parameter passes the checks the
real API server makes (``PVE::JSONSchema``): no unknown parameter (``additionalProperties: 0``),
every non-optional one present, types (integers, ``0``/``1`` booleans), ``enum``, ``pattern``,
``minimum``/``maximum``, ``maxLength``, and property strings (``hostpci0``, ``net0``,
``efidisk0``, ``prune-backups``, ...) parsed key by key against their format: the format's
own sub-schema where the schema carries it, else one derived from its ``typetext``
(``[[host=]<HOSTPCIID...>] [,pcie=<1|0>] ...``). A value that breaks any of these is a 400
with the parameter's name, as the real API answers.

Standard library only: the double also runs inside a lab container with Debian's python3.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Where the schema lives: next to this file, or ../shared/reference/pve-api from the repository.
_HERE = Path(__file__).resolve()
SCHEMA_DIRS = (
    _HERE.parent,  # next to the double (where the lab copies it)
    *(parent / "shared" / "reference" / "pve-api" for parent in _HERE.parents[2:5]),
)


def schema_file(version: int = 9) -> Path:
    """The schema file for Proxmox VE ``version`` (8 or 9); FileNotFoundError names where."""
    name = f"apidata-v{version}.json"
    for folder in SCHEMA_DIRS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"the Proxmox API schema {name} is in none of: " + ", ".join(map(str, SCHEMA_DIRS))
    )


# --- named formats ----------------------------------------------------------------------

_HEX4 = r"(?:0x)?[0-9a-fA-F]{4}"
_PCI = r"(?:[0-9a-fA-F]{4,}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\.[0-7])?"
# Simple named formats: a full-match pattern (PVE::JSONSchema's format checks).
NAMED_PATTERNS: dict[str, str] = {
    "pve-node": r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?",
    "pve-vmid": r"[1-9][0-9]{2,8}",
    "pve-storage-id": r"[a-z][a-z0-9\-_.]*[a-z0-9]",
    "pve-configid": r"[a-z][a-z0-9_-]+",
    "pve-bridge-id": r"[-_.\w\d]+",
    "pve-userid": r"[^\s:/]+@[A-Za-z][A-Za-z0-9.\-_]+",
    "pve-poolid": r"[A-Za-z0-9_\-]+",
    "pve-realm": r"[A-Za-z][A-Za-z0-9.\-_]+",
    "mac-addr": r"[a-fA-F0-9]{2}(?::[a-fA-F0-9]{2}){5}",
    "pve-startup-order": r"(?:(?:order=)?\d+)?(?:,?up=\d+)?(?:,?down=\d+)?",
    "pve-calendar-event": r"[A-Za-z0-9 ,.:*/~-]+",
    "pve-volume-id": r"[a-z][a-z0-9\-_.]*[a-z0-9]:.+",
    "pve-volume-id-or-qm-path": r"(?:[a-z][a-z0-9\-_.]*[a-z0-9]:.+|/.+|none|cdrom)",
    "pve-volume-id-or-absolute-path": r"(?:[a-z][a-z0-9\-_.]*[a-z0-9]:.+|/.+)",
    "pve-storage-content": r"images|rootdir|vztmpl|iso|backup|snippets|import|none",
    "pve-tag": r"[a-z0-9_][a-z0-9_\-+.]*",
    "dns-name": r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9\-]*[a-zA-Z0-9])?\.)*"
    r"[a-zA-Z0-9](?:[a-zA-Z0-9\-]*[a-zA-Z0-9])?",
    "urlencoded": r"[%A-Za-z0-9._~+\-]*",
    "pve-hotplug-features": r"(?:(?:network|disk|cpu|memory|usb|cloudinit)(?:,|$))*|0|1",
    "pve-qm-bootdisk": r"(?:ide|sata|scsi|virtio|efidisk|tpmstate)\d+",
}
NAMED_PATTERNS["pve-node-list"] = NAMED_PATTERNS["pve-node"]
NAMED_PATTERNS["pve-vmid-list"] = NAMED_PATTERNS["pve-vmid"]
NAMED_PATTERNS["pve-storage-id-list"] = NAMED_PATTERNS["pve-storage-id"]
NAMED_PATTERNS["pve-configid-list"] = NAMED_PATTERNS["pve-configid"]
NAMED_PATTERNS["pve-storage-content-list"] = NAMED_PATTERNS["pve-storage-content"]
NAMED_PATTERNS["pve-tag-list"] = NAMED_PATTERNS["pve-tag"]


def _ip(value: str, version: int | None = None, cidr: bool = False) -> bool:
    try:
        if cidr:
            address = ipaddress.ip_interface(value)
            if "/" not in value:
                return False
        else:
            address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return version is None or address.version == version


NAMED_CHECKS: dict[str, Any] = {
    "ip": lambda v: _ip(v),
    "ipv4": lambda v: _ip(v, 4),
    "ipv6": lambda v: _ip(v, 6),
    "address": lambda v: _ip(v) or re.fullmatch(NAMED_PATTERNS["dns-name"], v) is not None,
    "CIDR": lambda v: _ip(v, cidr=True),
    "IPorCIDR": lambda v: _ip(v) or _ip(v, cidr=True),
}

# Sub-keys of named property-string formats whose typetext alone says too little.
SUBKEY_PATTERNS: dict[tuple[str, str], str] = {
    ("pve-qm-hostpci", "host"): rf"{_PCI}(?:;{_PCI})*",
    ("pve-qm-hostpci", "device-id"): _HEX4,
    ("pve-qm-hostpci", "vendor-id"): _HEX4,
    ("pve-qm-hostpci", "sub-device-id"): _HEX4,
    ("pve-qm-hostpci", "sub-vendor-id"): _HEX4,
    ("pve-qm-hostpci", "mapping"): NAMED_PATTERNS["pve-configid"],
    ("pve-qm-ipconfig", "ip"): r"dhcp|[0-9.]+/\d+",
    ("pve-qm-ipconfig", "gw"): r"[0-9.]+",
    ("pve-qm-ipconfig", "ip6"): r"dhcp|auto|[0-9a-fA-F:]+/\d+",
    ("pve-qm-ipconfig", "gw6"): r"[0-9a-fA-F:]+",
    ("pve-vm-cpu-conf", "cputype"): r"[A-Za-z0-9_.+-]+",
}

# typetext items: "[[host=]<...>]", "[,pcie=<1|0>]", "type=<TFATYPE>", "[[order=]\d+]".
_TYPETEXT_ITEM = re.compile(
    r"(?P<open>\[)?,?(?P<dopen>\[)?(?P<key>[A-Za-z][A-Za-z0-9_-]*)=(?P<dclose>\])?"
    r"(?P<value><[^>]*>|[^\s\]]+)"
)


def typetext_format(typetext: str) -> dict[str, dict[str, Any]]:
    """A property-string sub-schema derived from a named format's ``typetext``."""
    keys: dict[str, dict[str, Any]] = {}
    for match in _TYPETEXT_ITEM.finditer(typetext):
        value = match["value"]
        spec: dict[str, Any] = {"type": "string", "optional": 1}
        inner = value[1:-1] if value.startswith("<") else value
        if inner == "1|0":
            spec["type"] = "boolean"
        elif inner in ("integer", "N", r"\d+", "COUNT"):
            spec["type"] = "integer"
            spec["minimum"] = 0
        elif inner == "hex id":
            spec["pattern"] = _HEX4
        elif "|" in inner and all(
            re.fullmatch(r"[A-Za-z0-9/._-]+", alt) for alt in inner.split("|")
        ):
            ranges = [alt for alt in inner.split("|") if re.fullmatch(r"\d+-\d+", alt)]
            if ranges:
                words = [alt for alt in inner.split("|") if alt not in ranges]
                spec["pattern"] = r"\d+|" + "|".join(map(re.escape, words))
            else:
                spec["enum"] = inner.split("|")
        if match["dopen"] and match["dclose"]:
            spec["default_key"] = 1
        if not match["open"] and not match["dopen"]:
            spec["optional"] = 0
        keys[match["key"]] = spec
    return keys


# --- value checks -----------------------------------------------------------------------


class SchemaError(ValueError):
    """A request the real API would refuse: ``errors`` maps parameter -> message."""

    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None) -> None:
        self.status = status
        self.message = message
        self.errors = errors or {}
        super().__init__(self.__str__())

    def __str__(self) -> str:
        detail = "; ".join(f"{k}: {v}" for k, v in sorted(self.errors.items()))
        return f"{self.status} {self.message}" + (f" ({detail})" if detail else "")


def _perl_regex(pattern: str) -> str:
    return pattern.replace("(?^:", "(?:").replace("(?^i:", "(?i:")


def check_value(spec: dict[str, Any], value: Any, fmt_name: str = "") -> str | None:
    """Why ``value`` (as sent, a string) breaks ``spec``; None when it passes."""
    kind = spec.get("type", "string")
    if isinstance(value, list):
        if kind != "array":
            return f"type check ('{kind}') failed - got a list"
        items = spec.get("items") or {}
        for item in value:
            problem = check_value(items, item)
            if problem:
                return problem
        return None
    text = str(value)
    if kind == "array":
        return check_value(spec.get("items") or {}, text)
    if kind == "boolean":
        if text not in ("0", "1"):
            return f"type check ('boolean') failed - got '{text}'"
        return None
    if kind == "integer":
        if not re.fullmatch(r"-?\d+", text):
            return f"type check ('integer') failed - got '{text}'"
        number: float = int(text)
    elif kind == "number":
        try:
            number = float(text)
        except ValueError:
            return f"type check ('number') failed - got '{text}'"
    else:
        number = 0
    if kind in ("integer", "number"):
        if "minimum" in spec and number < float(spec["minimum"]):
            return f"value must have a minimum value of {spec['minimum']}"
        if "maximum" in spec and number > float(spec["maximum"]):
            return f"value must have a maximum value of {spec['maximum']}"
    if "enum" in spec and text not in [str(e) for e in spec["enum"]]:
        choices = ", ".join(map(str, spec["enum"]))
        return f"value '{text}' does not have a value in the enumeration '{choices}'"
    if "maxLength" in spec and len(text) > int(spec["maxLength"]):
        return f"value may only be {spec['maxLength']} characters long"
    if "minLength" in spec and len(text) < int(spec["minLength"]):
        return f"value must be at least {spec['minLength']} characters long"
    if "pattern" in spec and not re.fullmatch(_perl_regex(spec["pattern"]), text):
        return "value does not match the regex pattern"
    fmt = spec.get("format")
    if isinstance(fmt, dict):
        return check_property_string(fmt, text)
    if isinstance(fmt, str):
        return check_named(fmt, spec, text)
    return None


def check_named(fmt: str, spec: dict[str, Any], text: str) -> str | None:
    """Check ``text`` against the named format ``fmt`` (list formats split on , ; space)."""
    if fmt.endswith("-list") and fmt in NAMED_PATTERNS:
        parts = [p for p in re.split(r"[,;\s]+", text) if p]
        for part in parts:
            if not re.fullmatch(NAMED_PATTERNS[fmt], part):
                return f"value '{part}' does not look like a valid {fmt[:-5]}"
        return None
    if fmt in NAMED_PATTERNS:
        if not re.fullmatch(NAMED_PATTERNS[fmt], text):
            return f"value does not look like a valid {fmt}"
        return None
    if fmt in NAMED_CHECKS:
        return None if NAMED_CHECKS[fmt](text) else f"value does not look like a valid {fmt}"
    typetext = spec.get("typetext", "")
    if "=" in typetext:
        sub = typetext_format(typetext)
        for (name, key), pattern in SUBKEY_PATTERNS.items():
            if name == fmt and key in sub:
                sub[key] = {**sub[key], "pattern": pattern}
        problem = check_property_string(sub, text)
        if problem is None and fmt == "pve-qm-hostpci":
            keys = parse_property_string(sub, text)
            if ("host" in keys) == ("mapping" in keys):
                return "either 'host' or 'mapping' must be set (not both)"
        return problem
    return None  # a named format this double does not know: accepted as a plain string


def parse_property_string(fmt: dict[str, Any], text: str) -> dict[str, str]:
    """``k=v,k=v`` with an optional default key first, as PVE parses property strings."""
    default_key = next((k for k, s in fmt.items() if s.get("default_key")), None)
    result: dict[str, str] = {}
    for part in text.split(","):
        if not part:
            continue
        if "=" in part:
            key, value = part.split("=", 1)
            spec = fmt.get(key, {})
            if "alias" in spec and "keyAlias" in spec:
                # net0: "virtio=AA:BB:..." is model=virtio, macaddr=AA:BB:...
                result[spec["keyAlias"]] = key
                result[spec["alias"]] = value
                continue
            result[key] = value
        elif default_key is not None and default_key not in result:
            result[default_key] = part
        else:
            result[part] = ""  # no key and no default key: PVE's "value without key"
    return result


def check_property_string(fmt: dict[str, Any], text: str) -> str | None:
    keys = parse_property_string(fmt, text)
    for key, value in keys.items():
        spec = fmt.get(key)
        if spec is None or "alias" in spec:
            if value == "":
                return (
                    "invalid format - value without key, but schema does not define a default"
                    f" key: '{key}'"
                )
            return f"invalid format - property '{key}' is not defined in schema"
        problem = check_value(spec, value)
        if problem:
            return f"invalid format - {key}: {problem}"
    for key, spec in fmt.items():
        if "alias" in spec or "keyAlias" in spec:
            continue
        if not spec.get("optional") and key not in keys and not spec.get("default_key"):
            return f"invalid format - property '{key}' is missing"
    return None


# --- the API tree -----------------------------------------------------------------------


@dataclass
class Endpoint:
    path: str
    regex: re.Pattern[str]
    path_params: tuple[str, ...]
    info: dict[str, Any] = field(repr=False)


class ApiSchema:
    """Proxmox VE's API schema: which paths and methods exist and what each accepts."""

    def __init__(self, version: int = 9, path: Path | None = None) -> None:
        self.version = version
        self.file = path or schema_file(version)
        tree = json.loads(self.file.read_text())
        self.endpoints: list[Endpoint] = []
        stack = list(tree)
        while stack:
            node = stack.pop()
            stack.extend(node.get("children") or [])
            names = tuple(re.findall(r"\{([^}]+)\}", node["path"]))
            pattern = re.sub(r"\\\{[^}]+\\\}", "([^/]+)", re.escape(node["path"]))
            self.endpoints.append(
                Endpoint(node["path"], re.compile(pattern + "$"), names, node.get("info") or {})
            )
        # Literal paths win over templated ones (/cluster/backup-info vs {id}).
        self.endpoints.sort(key=lambda e: (len(e.path_params), e.path))

    def endpoint(self, path: str) -> tuple[Endpoint, dict[str, str]]:
        for endpoint in self.endpoints:
            match = endpoint.regex.match(path)
            if match:
                return endpoint, dict(zip(endpoint.path_params, match.groups(), strict=True))
        raise SchemaError(501, f"Method '{path}' not implemented")

    def check(self, method: str, path: str, params: dict[str, Any]) -> tuple[str, dict[str, str]]:
        """Check one request; return (schema path, path parameters) or raise SchemaError."""
        endpoint, path_params = self.endpoint(path)
        info = endpoint.info.get(method)
        if info is None:
            raise SchemaError(501, f"Method '{method} {path}' not implemented")
        properties = (info.get("parameters") or {}).get("properties") or {}
        strict = (info.get("parameters") or {}).get("additionalProperties", 0) in (0, None)
        errors: dict[str, str] = {}
        given = {**params, **path_params}
        for name, value in given.items():
            spec = properties.get(name)
            if spec is None:
                indexed = re.sub(r"\d+$", "[n]", name)
                spec = properties.get(indexed) if indexed != name else None
            if spec is None:
                if strict:
                    errors[name] = (
                        "property is not defined in schema and the schema does not allow"
                        " additional properties"
                    )
                continue
            problem = check_value(spec, value)
            if problem:
                errors[name] = problem
        for name, spec in properties.items():
            if "[n]" in name or spec.get("optional"):
                continue
            if name not in given:
                errors[name] = "property is missing and it is not optional"
        if errors:
            raise SchemaError(400, "Parameter verification failed.", errors)
        return endpoint.path, path_params
