"""Tailscale's data keys and the facts the task reads (no hosts)."""

from __future__ import annotations

import json

import pytest

from tasks.base.tailscale import DATA, TailscaleState, UrlTemplate
from tasks.common.apt_keys import Fingerprint, KeyringFingerprints
from tasks.common.datamodel.forms import FormError
from tasks.common.datamodel.keys import DataError


def test_defaults_are_tailscales_real_repository_and_key() -> None:
    values = DATA.check("embedder", {})
    assert values["tailscale_repo_url"] == "https://pkgs.tailscale.com/{track}/{distro}"
    assert values["tailscale_key_url"].format(
        track="stable", distro="debian", codename="trixie"
    ) == ("https://pkgs.tailscale.com/stable/debian/trixie.noarmor.gpg")
    assert values["tailscale_key_fingerprint"] == "2596A99EAAB33821893C0A79458CA832957F5868"
    assert values["tailscale_track"] == "stable"
    assert values["tailscale_version"] is None
    assert values["tailscale_accept_dns"] is False  # hosts keep the LAN's resolver


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("tailscale_tags", ["homelab"], 'a Tailscale tag such as "tag:homelab"'),
        ("tailscale_track", "beta", "one of 'stable', 'unstable'"),
        ("tailscale_key_fingerprint", "2596A99E", "an OpenPGP key fingerprint, 40 hex digits"),
        ("tailscale_repo_url", "https://pkgs.tailscale.com/{release}", "the deploy fills in"),
        ("tailscale_key_url", "ftp://pkgs.tailscale.com/key.gpg", "an http(s) URL"),
        ("tailscale_hostname", "Pve.Lan", "a single DNS label"),
        ("tailscale_version", "latest", "a Tailscale package version"),
        ("tailscale_ssh", "yes", "true or false"),
    ],
)
def test_bad_values_name_host_key_value_and_form(key: str, value: object, expected: str) -> None:
    with pytest.raises(DataError) as bad:
        DATA.check("embedder", {key: value})
    message = str(bad.value)
    assert message.startswith(f"host 'embedder': key '{key}"), message
    assert repr(value if not isinstance(value, list) else value[0]) in message
    assert expected in message


def test_fingerprint_is_normalised() -> None:
    spaced = "2596 a99e aab3 3821 893c  0a79 458c a832 957f 5868"
    assert Fingerprint().check(spaced) == "2596A99EAAB33821893C0A79458CA832957F5868"
    with pytest.raises(FormError):
        Fingerprint().check("2596A99EAAB33821893C0A79458CA832957F586G")


def test_url_template_fills_in_only_known_names() -> None:
    form = UrlTemplate("https://x/{track}")
    assert form.check("http://10.213.0.1:8081/{track}/{distro}") == (
        "http://10.213.0.1:8081/{track}/{distro}"
    )
    for bad in ("https://x/{0}", "https://x/{track", "https://x/{arch}", "x/{track}"):
        with pytest.raises(FormError):
            form.check(bad)


def _state_output(status: dict | None, prefs: dict | None) -> list[str]:
    lines = json.dumps(status, indent=2).splitlines() if status is not None else ["{}"]
    lines.append("#homelab-tailscale-prefs")
    lines += json.dumps(prefs, indent=1).splitlines() if prefs is not None else ["{}"]
    return lines


def test_tailscale_state_reads_backend_state_and_prefs() -> None:
    fact = TailscaleState()
    assert fact.process([]) is None  # not installed
    running = fact.process(
        _state_output({"BackendState": "Running", "Peer": {}}, {"RunSSH": True, "Hostname": "x"})
    )
    assert running == {"backend_state": "Running", "prefs": {"RunSSH": True, "Hostname": "x"}}
    # tailscaled not answering: status and prefs print nothing but the fallbacks.
    assert fact.process(_state_output(None, None)) == {
        "backend_state": "Unavailable",
        "prefs": {},
    }
    assert fact.process(["not json", "#homelab-tailscale-prefs", "{"]) == {
        "backend_state": "Unavailable",
        "prefs": {},
    }


def test_keyring_fingerprints() -> None:
    fact = KeyringFingerprints()
    assert "gpg --batch --show-keys --with-colons" in fact.command("/usr/share/keyrings/x.gpg")
    assert fact.process([]) is None  # no such file
    assert fact.process(["#unreadable"]) is None  # no gpg yet
    assert fact.process(["#read"]) == []  # a file, but no key in it
    assert fact.process(["AAAA", "BBBB", "#read"]) == ["AAAA", "BBBB"]
