"""Declared data keys: every value a task reads is declared once, here or in its task module.

A :class:`Key` names a data key, its form, its default and what it means; a :class:`Schema`
groups the keys one task reads. ``Schema.defaults()`` feeds pyinfra's ``@deploy(data_defaults=)``
and ``Schema.read(host)`` gives the task its values checked and normalised. The same
declarations drive validation before a run, and the table of keys (docs/data-keys.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from tasks.common.datamodel.forms import Form, FormError, plain


class _Required:
    """Marker default: the key has no default and must be given in the data."""

    def __repr__(self) -> str:
        return "(required)"


REQUIRED: Any = _Required()

# One problem found by a cross-key check: (key, given value, expected form).
Problem = tuple[str, Any, str]


@dataclass(frozen=True)
class Key:
    """One data key.

    ``groups`` limits where the key applies (empty: every host); a key that does not apply to a
    host may still be set there (group_data/all.py sets keys for all hosts), but is only checked
    where it applies.
    """

    name: str
    form: Form
    default: Any
    doc: str
    groups: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def applies_to(self, host_groups: Iterable[str]) -> bool:
        return not self.groups or bool(set(self.groups) & set(host_groups))


class DataError(ValueError):
    """A bad data value: names the host, the key, what was given and what is expected."""

    def __init__(self, host: str, key: str, given: Any, expected: str) -> None:
        self.host = host
        self.key = key
        self.given = given
        self.expected = expected
        super().__init__(str(self))

    def __str__(self) -> str:
        given = "(missing)" if self.given is None else repr(plain(self.given))
        return f"host {self.host!r}: key {self.key!r} is {given}; expected {self.expected}"


def check_key(host_name: str, key: Key, data: Mapping[str, Any]) -> Any:
    """The normalised value of ``key`` in ``data`` (or its default); DataError when bad."""
    given = data.get(key.name, key.default)
    if given is REQUIRED:
        raise DataError(host_name, key.name, None, key.form.description)
    try:
        return key.form.check(given)
    except FormError as error:
        raise DataError(host_name, key.name + error.path, error.given, error.expected) from None


class Schema:
    """The keys one task reads, under the task's name (``owner``, used in docs/data-keys.md)."""

    def __init__(
        self,
        owner: str,
        *keys: Key,
        checks: tuple[Callable[[Mapping[str, Any]], Iterable[Problem]], ...] = (),
    ) -> None:
        self.owner = owner
        self.keys = {key.name: key for key in keys}
        # Checks across this schema's keys: each gets the normalised values and yields
        # (key, given, expected) for every problem.
        self.checks = checks

    def problems(self, host_name: str, values: Mapping[str, Any]) -> list[DataError]:
        """Problems between keys (run after every key passed on its own)."""
        if not all(name in values for name in self.keys):
            return []
        return [
            DataError(host_name, key, given, expected)
            for check in self.checks
            for key, given, expected in check(values)
        ]

    def __iter__(self):
        return iter(self.keys.values())

    def defaults(self) -> dict[str, Any]:
        """The defaults, for ``@deploy(data_defaults=...)`` (required keys have none)."""
        return {key.name: key.default for key in self if not key.required}

    def check(self, host_name: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """Check this schema's keys in ``data``; return normalised values or raise DataError."""
        return {key.name: check_key(host_name, key, data) for key in self}

    def read(self, host: Any) -> Settings:
        """The values of this schema's keys for the pyinfra ``host``, checked and normalised."""
        data = {key.name: host.data.get(key.name, key.default) for key in self}
        values = self.check(host.name, data)
        problems = self.problems(host.name, values)
        if problems:
            raise problems[0]
        return Settings(values)


class Settings(Mapping[str, Any]):
    """Read-only, attribute-style view of a task's checked values (``settings.timezone``)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = MappingProxyType(dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)
