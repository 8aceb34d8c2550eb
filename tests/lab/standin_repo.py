"""The lab's stand-in for Tailscale's apt repository: signed, served from the lab machine.

Tailscale's repository cannot be reached from the lab, so the lab builds one shaped like it:
``<track>/<distro>/<codename>.noarmor.gpg`` (the signing key, binary) next to
``<track>/<distro>/dists/<codename>/...`` (InRelease, Release.gpg, Packages) and ``pool/``,
signed with the lab's own test key, holding a ``tailscale`` package whose binaries are the
TEST DOUBLE in ``tests/lab/standin/`` (named so in their text and by the marker file
``/usr/share/tailscale-standin/TEST-DOUBLE`` the package installs). The deploy's real code
then downloads and checks the key, writes the source, installs and starts the package.

Built with the Debian tools for the job (gpg, dpkg-deb, apt-ftparchive) into the lab cache,
once per recipe; ``labctl up`` builds it when missing and serves it over HTTP at
``http://<gateway>:8081/``. Standard library only (``labctl`` imports it).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.lab import hosts

STANDIN_DIR = Path(__file__).resolve().parent / "standin"
BASE_DIR = hosts.CACHE_DIR / "tailscale-standin"
KEY_HOME = BASE_DIR / "gnupg"  # the lab's test signing key (never a real one)
FINGERPRINT_FILE = BASE_DIR / "fingerprint"
PORT = 8081
TRACK = "stable"
DISTRO = "debian"
CODENAME = "trixie"  # the lab hosts' release (labctl's SUITE)
PACKAGE_VERSION = "1.90.6+labstandin1"
MARKER = "usr/share/tailscale-standin/TEST-DOUBLE"
KEY_UID = "homelab lab stand-in for Tailscale's repository (TEST KEY) <lab@homelab.invalid>"
# Bump when the layout or the package's contents change in a way the files' hashes miss.
RECIPE = 2

# The double's files: name in tests/lab/standin/ -> path in the package, mode.
PACKAGE_FILES = (
    ("tailscale", "usr/bin/tailscale", 0o755),
    ("tailscaled", "usr/sbin/tailscaled", 0o755),
    ("tailscaled.service", "lib/systemd/system/tailscaled.service", 0o644),
    ("tailscaled.default", "etc/default/tailscaled", 0o644),
)
MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")


class StandinError(Exception):
    """The stand-in repository could not be built."""


def _run(cmd: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    try:
        result = subprocess.run(
            list(cmd),
            cwd=cwd,
            env=env,
            check=False,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
    except FileNotFoundError:
        raise StandinError(f"{cmd[0]} is not installed (run `labctl deps`)") from None
    if result.returncode != 0:
        raise StandinError(
            f"{' '.join(cmd)} failed (exit {result.returncode}):\n{result.stderr.strip()}"
        )
    return result.stdout


def _gpg(*args: str, home: Path = KEY_HOME) -> str:
    return _run(
        ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
         "--passphrase", "", *args]
    )  # fmt: skip


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One builder at a time (labs side by side share the cache)."""
    BASE_DIR.mkdir(parents=True, exist_ok=True)
    with open(BASE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _agent_stopped(home: Path) -> Iterator[None]:
    """gpg starts a gpg-agent for the key's home: stop it again, leave no process behind."""
    try:
        yield
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--kill", "all"],
            check=False,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )


def fingerprint() -> str:
    """The test key's fingerprint; a clear error when the lab has not built it yet."""
    try:
        return FINGERPRINT_FILE.read_text().strip()
    except OSError:
        raise StandinError(
            f"the lab's stand-in Tailscale repository is not built ({FINGERPRINT_FILE} is"
            " missing): run `python3 tests/lab/labctl.py up`"
        ) from None


def _ensure_key() -> str:
    if FINGERPRINT_FILE.is_file() and (KEY_HOME / "pubring.kbx").is_file():
        return fingerprint()
    partial = Path(tempfile.mkdtemp(prefix=".gnupg-", dir=BASE_DIR))
    try:
        with _agent_stopped(partial):
            _gpg("--quick-generate-key", KEY_UID, "ed25519", "sign", "never", home=partial)
            listing = _gpg("--with-colons", "--list-secret-keys", home=partial)
        prints = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")]
        if not prints:
            raise StandinError("gpg made no key")
        shutil.rmtree(KEY_HOME, ignore_errors=True)
        os.rename(partial, KEY_HOME)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    FINGERPRINT_FILE.write_text(prints[0] + "\n")
    return prints[0]


def _recipe_hash(key_fingerprint: str, arch: str) -> str:
    digest = hashlib.sha256(f"{RECIPE}\n{key_fingerprint}\n{arch}\n{PACKAGE_VERSION}\n".encode())
    for name in sorted(os.listdir(STANDIN_DIR)):
        digest.update(name.encode() + b"\0" + (STANDIN_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


def repo_dir() -> Path:
    """The directory served for the current recipe (under the lab cache)."""
    arch = _run(["dpkg", "--print-architecture"]).strip()
    return BASE_DIR / f"repo-{_recipe_hash(fingerprint(), arch)}"


def _build_package(work: Path) -> Path:
    root = work / "package"
    for source, target, mode in PACKAGE_FILES:
        path = root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(STANDIN_DIR / source, path)
        path.chmod(mode)
    marker = root / MARKER
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        "This tailscale is the homelab lab's stand-in, a TEST DOUBLE: not Tailscale.\n"
        "Built by tests/lab/standin_repo.py; it joins no tailnet.\n"
    )
    debian = root / "DEBIAN"
    debian.mkdir()
    for script in MAINTAINER_SCRIPTS:
        shutil.copyfile(STANDIN_DIR / script, debian / script)
        (debian / script).chmod(0o755)
    (debian / "conffiles").write_text("/etc/default/tailscaled\n")
    (debian / "control").write_text(
        "Package: tailscale\n"
        f"Version: {PACKAGE_VERSION}\n"
        "Architecture: all\n"
        "Maintainer: homelab-as-code lab <lab@homelab.invalid>\n"
        "Depends: python3\n"
        "Section: net\n"
        "Priority: optional\n"
        "Description: lab stand-in for Tailscale (a TEST DOUBLE, not Tailscale)\n"
        " The homelab lab's test double of Tailscale's package: tailscale and tailscaled\n"
        " keep login state and prefs like the real ones but join no tailnet.\n"
    )
    for directory in [root, *root.rglob("*")]:
        if directory.is_dir():
            directory.chmod(0o755)
    deb = work / f"tailscale_{PACKAGE_VERSION}_all.deb"
    _run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)])
    return deb


def publish_suite(
    top: Path, suite: str, origin: str, label: str, arch: str, key_fingerprint: str
) -> None:
    """Index ``top/pool`` as ``dists/<suite>`` (component main) and sign its Release with the
    lab's test key (InRelease and Release.gpg), as a real apt repository is laid out."""
    binary = top / "dists" / suite / "main" / f"binary-{arch}"
    binary.mkdir(parents=True)
    packages = _run(["apt-ftparchive", "packages", "pool"], cwd=top)
    (binary / "Packages").write_text(packages)
    with gzip.open(binary / "Packages.gz", "wt") as handle:
        handle.write(packages)
    dist = top / "dists" / suite
    release = _run(
        [
            "apt-ftparchive",
            "-o", f"APT::FTPArchive::Release::Origin={origin}",
            "-o", f"APT::FTPArchive::Release::Label={label}",
            "-o", f"APT::FTPArchive::Release::Suite={suite}",
            "-o", f"APT::FTPArchive::Release::Codename={suite}",
            "-o", f"APT::FTPArchive::Release::Architectures={arch}",
            "-o", "APT::FTPArchive::Release::Components=main",
            "release", ".",
        ],
        cwd=dist,
    )  # fmt: skip
    (dist / "Release").write_text(release)
    with _agent_stopped(KEY_HOME):
        signer = ("--local-user", key_fingerprint, "--digest-algo", "SHA512")
        _gpg(*signer, "--clearsign", "-o", str(dist / "InRelease"), str(dist / "Release"))
        _gpg(*signer, "--detach-sign", "-o", str(dist / "Release.gpg"), str(dist / "Release"))


def _build_repo(target: Path, key_fingerprint: str, arch: str) -> None:
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=BASE_DIR))
    try:
        deb = _build_package(work)
        served = work / "served"
        top = served / TRACK / DISTRO
        pool = top / "pool" / "main" / "t" / "tailscale"
        pool.mkdir(parents=True)
        shutil.copyfile(deb, pool / deb.name)
        publish_suite(
            top, CODENAME, "Tailscale (lab stand-in)", "Tailscale lab stand-in (test double)",
            arch, key_fingerprint,
        )  # fmt: skip
        with _agent_stopped(KEY_HOME):
            _gpg("--export", "-o", str(top / f"{CODENAME}.noarmor.gpg"), key_fingerprint)
        for path in [served, *served.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        with contextlib.suppress(OSError):  # another lab built it meanwhile: keep theirs
            os.rename(served, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_built() -> Path:
    """Build the key and the repository for the current recipe unless cached; return its dir."""
    with _locked():
        key_fingerprint = _ensure_key()
        target = repo_dir()
        if not (target / TRACK / DISTRO / "dists" / CODENAME / "InRelease").is_file():
            shutil.rmtree(target, ignore_errors=True)
            arch = _run(["dpkg", "--print-architecture"]).strip()
            _build_repo(target, key_fingerprint, arch)
        return target


def base_url() -> str:
    return f"http://{hosts.GATEWAY}:{PORT}"


def tailscale_data() -> dict[str, str]:
    """The lab inventory's overrides: Tailscale's repository and key are the stand-in's."""
    return {
        "tailscale_repo_url": base_url() + "/{track}/{distro}",
        "tailscale_key_url": base_url() + "/{track}/{distro}/{codename}.noarmor.gpg",
        "tailscale_key_fingerprint": fingerprint(),
    }
