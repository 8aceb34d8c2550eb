"""A test double of apt's version choice: the candidate apt would install, given pins.

Test double support: it stands in for ``apt-cache policy`` on a host whose sources and apt
preferences the plan wrote, so a plan test can ask which build of a package a fresh host would
get. It follows apt_preferences(5) for what the deploy writes: the first specific-form record
(``Package: NAME`` with ``Pin: version /regex/``, ``version GLOB`` or ``origin SITE``) that
matches a version decides its priority; failing that, the highest of the general-form records
(``Package: *`` with ``Pin: origin SITE``) that match; failing that, 500. The candidate is the
version of highest priority, the highest version among equals (dpkg's ordering). Not modelled:
installed versions, ``Pin: release``, NotAutomatic archives, ``Package:`` patterns.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

DEFAULT_PRIORITY = 500


def _order(char: str) -> int:
    """dpkg's order of a non-digit character: ~ before the end, letters before the rest."""
    if char == "~":
        return -1
    if char.isdigit() or char == "":
        return 0
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's verrevcmp: non-digit runs by _order, digit runs as numbers."""
    while a or b:
        while (a and not a[0].isdigit()) or (b and not b[0].isdigit()):
            first, second = _order(a[:1]), _order(b[:1])
            if first != second:
                return first - second
            a, b = a[1:], b[1:]
        digits_a = re.match(r"[0-9]*", a).group()  # type: ignore[union-attr]
        digits_b = re.match(r"[0-9]*", b).group()  # type: ignore[union-attr]
        difference = int(digits_a or 0) - int(digits_b or 0)
        if difference:
            return difference
        a, b = a[len(digits_a) :], b[len(digits_b) :]
    return 0


def compare_versions(a: str, b: str) -> int:
    """Debian version comparison (as ``dpkg --compare-versions``): <0, 0 or >0."""

    def split(version: str) -> tuple[int, str, str]:
        epoch, _, rest = version.partition(":") if ":" in version else ("0", "", version)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch), upstream, revision

    epoch_a, upstream_a, revision_a = split(a)
    epoch_b, upstream_b, revision_b = split(b)
    if epoch_a != epoch_b:
        return epoch_a - epoch_b
    return _compare_part(upstream_a, upstream_b) or _compare_part(revision_a, revision_b)


@dataclass(frozen=True)
class Available:
    """One version of a package that a source (its site, e.g. ``apt.postgresql.org``) lists."""

    package: str
    version: str
    site: str


def _pin_matches(pin: str, entry: Available) -> bool:
    kind, _, value = pin.partition(" ")
    if kind == "origin":
        return value.strip('"') == entry.site
    if kind == "version":
        if value.startswith("/") and value.endswith("/"):
            return re.search(value[1:-1], entry.version) is not None
        return fnmatch.fnmatchcase(entry.version, value)
    raise ValueError(f"apt policy double: pin {pin!r} is not modelled")


class AptPolicyDouble:
    """apt's candidate choice under ``records`` (the preference file's records, as dicts)."""

    def __init__(self, records: list[dict[str, str]], available: list[Available]) -> None:
        self.records = records
        self.available = available

    def priority(self, entry: Available) -> int:
        for record in self.records:
            specific = record["Package"] != "*" and entry.package in record["Package"].split()
            if specific and _pin_matches(record["Pin"], entry):
                return int(record["Pin-Priority"])
        general = [
            int(record["Pin-Priority"])
            for record in self.records
            if record["Package"] == "*" and _pin_matches(record["Pin"], entry)
        ]
        return max(general) if general else DEFAULT_PRIORITY

    def candidate(self, package: str) -> Available | None:
        """What ``apt-get install PACKAGE`` would take on a host that lacks it (None: nothing)."""
        best: Available | None = None
        best_priority = 0
        for entry in self.available:
            if entry.package != package:
                continue
            priority = self.priority(entry)
            if priority < 0:
                continue
            if (
                best is None
                or priority > best_priority
                or (priority == best_priority and compare_versions(entry.version, best.version) > 0)
            ):
                best, best_priority = entry, priority
        return best
