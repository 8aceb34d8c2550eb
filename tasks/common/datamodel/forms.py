"""Value forms: what a data value must look like, checked before anything is touched.

A form checks one value and returns it normalised (sizes to bytes, CIDRs to networks, ...) or
raises :class:`FormError` saying what was expected. Forms compose (``ListOf``, ``Struct``,
``Optional``), and the error carries the path inside the value (``gpus[0].functions[1].id``)
so a message can name exactly what is wrong.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class FormError(ValueError):
    """A value does not have the expected form. ``path`` is the position inside the value."""

    def __init__(self, expected: str, given: Any, path: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.given = given
        self.path = path

    def inside(self, step: str) -> FormError:
        """Return the same error one level further out (``step`` is ``[2]`` or ``.name``)."""
        return FormError(self.expected, self.given, step + self.path)


class Form:
    """Base class: ``check`` returns the normalised value or raises :class:`FormError`."""

    description = "a value"

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.description


# Characters a value may never hold: a newline or carriage return splits a config line or a
# shell command in two, an escape rewrites the terminal that shows a plan.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Multi-line text (a banner) keeps its line breaks and tabs, nothing else.
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
SINGLE_LINE = "on one line, without control characters"


def control_character_in(value: str, multiline: bool = False) -> bool:
    """True when ``value`` holds a control character (newlines and tabs too, unless
    ``multiline``)."""
    return bool((_CONTROL_IN_TEXT if multiline else _CONTROL).search(value))


@dataclass(frozen=True)
class Str(Form):
    """A string, optionally matching ``pattern`` (full match) or one of ``choices``.

    Control characters are refused whatever the pattern says: a value ends up in a config file
    or a command line, where a newline starts a new directive or command. ``multiline`` allows
    line breaks and tabs, for free text such as a banner.
    """

    pattern: str | None = None
    choices: tuple[str, ...] = ()
    what: str = ""
    multiline: bool = False

    @property
    def description(self) -> str:  # type: ignore[override]
        if self.what:
            return self.what
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.pattern:
            return f"a string matching {self.pattern}"
        return "a non-empty string"

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise FormError(self.description, value)
        if control_character_in(value, self.multiline):
            text = "without control characters other than line breaks and tabs"
            raise FormError(f"{self.description}, {text if self.multiline else SINGLE_LINE}", value)
        if self.choices and value not in self.choices:
            raise FormError(self.description, value)
        if self.pattern and not re.fullmatch(self.pattern, value):
            raise FormError(self.description, value)
        return value


@dataclass(frozen=True)
class Bool(Form):
    description = "true or false"

    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise FormError(self.description, value)
        return value


@dataclass(frozen=True)
class Int(Form):
    minimum: int | None = None
    maximum: int | None = None

    @property
    def description(self) -> str:  # type: ignore[override]
        if self.minimum is not None and self.maximum is not None:
            return f"a whole number from {self.minimum} to {self.maximum}"
        if self.minimum is not None:
            return f"a whole number of at least {self.minimum}"
        return "a whole number"

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FormError(self.description, value)
        if self.minimum is not None and value < self.minimum:
            raise FormError(self.description, value)
        if self.maximum is not None and value > self.maximum:
            raise FormError(self.description, value)
        return value


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


@dataclass(frozen=True)
class Size(Form):
    """A size with a binary unit, ``"16G"``, ``"500M"``, ``"22T"`` (``GiB``/``GB`` accepted)."""

    minimum: int = 1
    description = 'a size such as "500M", "16G" or "22T" (binary units)'

    def check(self, value: Any) -> int:
        if not isinstance(value, str):
            raise FormError(self.description, value)
        match = re.fullmatch(
            r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGTP])(?:i?B)?|B)?\s*", value, re.IGNORECASE
        )
        if not match:
            raise FormError(self.description, value)
        number = float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").upper()]
        if number < self.minimum:
            raise FormError(f"{self.description}, at least {self.minimum} bytes", value)
        return int(number)


@dataclass(frozen=True)
class IPv4Network(Form):
    description = 'an IPv4 network in CIDR form, such as "192.168.1.0/24" (no host bits set)'

    def check(self, value: Any) -> ipaddress.IPv4Network:
        if not isinstance(value, str) or "/" not in value:
            raise FormError(self.description, value)
        try:
            return ipaddress.IPv4Network(value, strict=True)
        except ValueError as error:
            raise FormError(self.description, value) from error


class IPNetwork(Form):
    description = (
        'an IPv4 or IPv6 network in CIDR form, such as "192.168.1.0/24", "192.168.1.7/32" or '
        '"fd00:1::/64" (no host bits set)'
    )

    def check(self, value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        if not isinstance(value, str) or "/" not in value:
            raise FormError(self.description, value)
        try:
            return ipaddress.ip_network(value, strict=True)
        except ValueError as error:
            raise FormError(self.description, value) from error


@dataclass(frozen=True)
class IPv4Address(Form):
    description = 'an IPv4 address such as "192.168.1.10"'

    def check(self, value: Any) -> ipaddress.IPv4Address:
        if not isinstance(value, str):  # ipaddress also takes ints and bytes
            raise FormError(self.description, value)
        try:
            return ipaddress.IPv4Address(value)
        except ValueError as error:
            raise FormError(self.description, value) from error


# PCI identifiers as lspci -nn prints them and as vfio-pci ids= takes them.
PCI_ID = Str(r"[0-9a-f]{4}:[0-9a-f]{4}", what='a PCI vendor:device ID, lower-case hex, "1002:7551"')
# Full domain:bus:device.function, as under /sys/bus/pci/devices/.
PCI_ADDRESS = Str(
    r"[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]",
    what='a PCI address domain:bus:device.function, lower-case hex, "0000:03:00.0"',
)
HOSTNAME = Str(
    r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*",
    what='a DNS host name, lower case, such as "ageis-node" or "pve.home.arpa"',
)
HOST_OR_ADDRESS = Str(
    r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*",
    what='a DNS host name or IPv4 address, lower case, such as "pve.home.arpa" or "192.168.1.10"',
)
UNIX_NAME = Str(r"[a-z_][a-z0-9_-]{0,31}", what='a Unix user or group name, such as "ops"')


@dataclass(frozen=True)
class ListOf(Form):
    item: Form
    min_items: int = 0
    unique: bool = False

    @property
    def description(self) -> str:  # type: ignore[override]
        least = f" (at least {self.min_items})" if self.min_items else ""
        return f"a list{least} of {self.item.description}"

    def check(self, value: Any) -> list[Any]:
        if not isinstance(value, (list, tuple)) or len(value) < self.min_items:
            raise FormError(self.description, value)
        checked = []
        for index, item in enumerate(value):
            try:
                checked.append(self.item.check(item))
            except FormError as error:
                raise error.inside(f"[{index}]") from None
        if self.unique and len(set(map(repr, checked))) != len(checked):
            raise FormError(f"{self.description}, without repeats", value)
        return checked


@dataclass(frozen=True)
class MapOf(Form):
    """A mapping from names of ``key`` form to values of ``item`` form."""

    key: Form
    item: Form

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"a mapping of {self.key.description} to {self.item.description}"

    def check(self, value: Any) -> dict[Any, Any]:
        if not isinstance(value, Mapping):
            raise FormError(self.description, value)
        checked = {}
        for name, item in value.items():
            try:
                checked_name = self.key.check(name)
            except FormError as error:
                raise FormError(f"a key that is {error.expected}", name, f"[{name!r}]") from None
            try:
                checked[checked_name] = self.item.check(item)
            except FormError as error:
                raise error.inside(f"[{name!r}]") from None
        return checked


@dataclass(frozen=True)
class Field:
    form: Form
    required: bool = True
    default: Any = None
    doc: str = ""


@dataclass(frozen=True)
class Struct(Form):
    """A mapping with named fields; unknown fields are refused (they are usually typos)."""

    fields: dict[str, Field] = field(default_factory=dict)
    what: str = "a mapping"

    @property
    def description(self) -> str:  # type: ignore[override]
        required = [name for name, spec in self.fields.items() if spec.required]
        optional = [name for name, spec in self.fields.items() if not spec.required]
        text = f"{self.what} with {', '.join(required) or 'no required fields'}"
        if optional:
            text += f" (optional: {', '.join(optional)})"
        return text

    def check(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise FormError(self.description, value)
        unknown = sorted(set(value) - set(self.fields), key=str)
        if unknown:
            raise FormError(
                f"only the fields {', '.join(self.fields)}", unknown[0], f".{unknown[0]}"
            )
        checked: dict[str, Any] = {}
        for name, spec in self.fields.items():
            if name not in value:
                if spec.required:
                    raise FormError(f"a field '{name}': {spec.form.description}", None, f".{name}")
                checked[name] = spec.default
                continue
            try:
                checked[name] = spec.form.check(value[name])
            except FormError as error:
                raise error.inside(f".{name}") from None
        return checked


@dataclass(frozen=True)
class Optional(Form):
    """``None`` or a value of ``inner`` form."""

    inner: Form

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"{self.inner.description}, or None"

    def check(self, value: Any) -> Any:
        return None if value is None else self.inner.check(value)


@dataclass(frozen=True)
class Predicate(Form):
    """``inner`` plus a test on the normalised value (``test`` returns True when it is fine)."""

    inner: Form
    test: Callable[[Any], bool]
    what: str

    @property
    def description(self) -> str:  # type: ignore[override]
        return self.what

    def check(self, value: Any) -> Any:
        checked = self.inner.check(value)
        if not self.test(checked):
            raise FormError(self.what, value)
        return checked


def is_normal_absolute_path(path: str) -> bool:
    """Absolute and already in normal form: no ``..`` or ``.`` segment, no ``//``, no trailing
    ``/``, so the path a check looks at is the path the host uses."""
    # normpath keeps a leading "//" (POSIX leaves its meaning open): refuse it separately.
    return path.startswith("/") and not path.startswith("//") and posixpath.normpath(path) == path


_ABSOLUTE_PATH_FORM = (
    'an absolute path in normal form such as "/srv/ssd" (no "..", ".", "//", trailing "/" or'
    " white space)"
)
ABSOLUTE_PATH = Predicate(
    Str(r"/[^\s]*", what=_ABSOLUTE_PATH_FORM), is_normal_absolute_path, _ABSOLUTE_PATH_FORM
)


def path_in_package(inside: str, absolute: str, package_key: str) -> Form:
    """A directory inside an installed package, or an absolute path when ``package_key`` is
    None; never ``..`` (a package must not point outside itself)."""
    return Predicate(
        Str(r"[^\0\s]+", what="a path"),
        lambda value: ".." not in value.split("/"),
        f'a directory inside the package ("{inside}") or an absolute path ("{absolute}") when'
        f" {package_key} is None",
    )


def plain(value: Any) -> Any:
    """Render a normalised value back into the plain data it came from, for messages."""
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv4Network)):
        return str(value)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [plain(v) for v in value]
    return value


# A systemd OnCalendar= expression (checked loosely here; systemd-analyze calendar is the judge).
CALENDAR = Str(
    r"[A-Za-z0-9*:.,/~ -]+", what='a systemd calendar expression such as "Sun *-*-* 01:30:00"'
)
# A kernel module's name, as modprobe and modules-load.d take it.
KERNEL_MODULE = Str(r"[a-z0-9_-]+", what='a kernel module name such as "nct6775"')
