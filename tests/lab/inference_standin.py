"""The lab's stand-ins for the inference stack's vendor sources: Ollama, ROCm, NodeSource.

Ollama's GitHub releases cannot be reached from the lab, so the lab builds a release shaped
like one, ``ollama/v<version>/{ollama-linux-amd64.tgz, ollama-linux-amd64-rocm.tgz,
sha256sum.txt}``, whose ``bin/ollama`` is the TEST DOUBLE in ``tests/lab/inference_standin/``
(and a ``lib/ollama/TEST-DOUBLE`` marker). ``labctl up`` builds it into the lab cache and
serves it at ``http://<gateway>:8082/``; the deploy's real code downloads, verifies (the main
archive by its pinned SHA-256, the ROCm one by the published list), unpacks and runs it.

ROCm's and NodeSource's apt repositories are unreachable too: the same site serves signed
repositories of their shape, ``rocm/apt/<version>`` and ``amdgpu/<version>/ubuntu`` (suite
noble, Origin ``repo.radeon.com`` so AMD's pin applies, key at ``rocm/rocm.gpg.key``) and
``node_24.x`` (suite nodistro, key at ``gpgkey/nodesource-repo.gpg.key``), signed with the
lab's test key (``standin_repo``), holding TEST DOUBLE packages (``amdgpu-dkms`` without a
module, ``rocminfo``, ``nodejs``...; each installs ``/usr/share/homelab-standin/<name>``).
The deploy's key check, deb822 sources, pins, apt's signature check and installs run for real.
Standard library only (``labctl`` imports it).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.lab import hosts, standin_repo

SOURCE = Path(__file__).resolve().parent / "inference_standin"
BASE_DIR = hosts.CACHE_DIR / "inference-standin"
PORT = 8082
OLLAMA_VERSION = "0.12.11"
ARCHIVES = ("ollama-linux-amd64.tgz", "ollama-linux-amd64-rocm.tgz")
RECIPE = 8
OPENCLAW_VERSION = "2026.9.6"
OPENCLAW_ARCHIVE = f"openclaw-standin-{OPENCLAW_VERSION}.tgz"
ROCM_VERSION = "7.1.1"
AMDGPU_VERSION = "30.20.1"
NODE_VERSION = "24.21.0"
SUITE = "noble"
# (repository path, suite, origin) -> [(package, version, files: path -> (text, mode))]
ROCM_BIN = "#!/bin/sh\necho 'lab stand-in {name} (TEST DOUBLE): no GPU, no ROCm'\nexit 1\n"
NODE_BIN = "#!/bin/sh\necho v" + NODE_VERSION + "\n"


def _kernel() -> str:
    return os.uname().release


# amd-smi's JSON answers list no GPU (true for a container), so its readers (the GPU metrics
# collector) see an empty card list rather than a failing tool.
SMI_BIN = (
    "#!/bin/sh\necho 'lab stand-in amd-smi (TEST DOUBLE): no GPU' >&2\n"
    'case " $* " in *" --json "*) echo "[]"; exit 0 ;; esac\nexit 1\n'
)


def _stub(command: str) -> dict[str, tuple[str, int]]:
    text = SMI_BIN if command == "amd-smi" else ROCM_BIN.format(name=command)
    return {f"opt/rocm/bin/{command}": (text, 0o755)}


def repositories() -> dict[tuple[str, str, str], list[tuple[str, str, dict[str, tuple[str, int]]]]]:
    kernel = _kernel()
    rocm = f"{ROCM_VERSION}.{ROCM_VERSION.replace('.', '0')}-1~24.04"
    return {
        (f"rocm/apt/{ROCM_VERSION}", SUITE, "repo.radeon.com"): [
            ("rocm-core", rocm, {}),
            # Like AMD's packages, these depend on rocm-core (whose version the deploy reads).
            ("rocm-hip-runtime", rocm, {"DEPENDS": ("rocm-core", 0)}),
            ("rocminfo", rocm, {**_stub("rocminfo"), "DEPENDS": ("rocm-core", 0)}),
            ("amd-smi-lib", rocm, {**_stub("amd-smi"), "DEPENDS": ("rocm-core", 0)}),
        ],
        (f"amdgpu/{AMDGPU_VERSION}/ubuntu", SUITE, "repo.radeon.com"): [
            ("amdgpu-dkms", f"1:6.16.6.{AMDGPU_VERSION.replace('.', '')}00-1~24.04", {}),
            (f"linux-headers-{kernel}", "1.0-1labstandin", {}),
            (f"linux-modules-extra-{kernel}", "1.0-1labstandin", {}),
        ],
        ("node_24.x", "nodistro", "Node Source"): [
            ("nodejs", f"{NODE_VERSION}-1nodesource1", {"usr/bin/node": (NODE_BIN, 0o755)}),
        ],
    }


def _recipe_hash() -> str:
    key = standin_repo.fingerprint() if standin_repo.FINGERPRINT_FILE.is_file() else ""
    digest = hashlib.sha256(f"{RECIPE}\n{OLLAMA_VERSION}\n{key}\n{_kernel()}\n".encode())
    for name in sorted(os.listdir(SOURCE)):
        digest.update(name.encode() + b"\0" + (SOURCE / name).read_bytes())
    return digest.hexdigest()[:12]


def served_dir() -> Path:
    return BASE_DIR / f"site-{_recipe_hash()}"


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


@contextlib.contextmanager
def _tgz(path: Path) -> Iterator[tarfile.TarFile]:
    """A .tgz whose bytes depend only on its contents (gzip header time 0)."""
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w") as tar,
    ):
        yield tar


def _archive(path: Path, rocm: bool) -> None:
    marker = b"Lab stand-in of Ollama's release: a TEST DOUBLE, not Ollama.\n"
    with _tgz(path) as tar:
        if rocm:
            _add(tar, "lib/ollama/rocm/TEST-DOUBLE", marker, 0o644)
        else:
            _add(tar, "bin/ollama", (SOURCE / "ollama").read_bytes(), 0o755)
            _add(tar, "lib/ollama/TEST-DOUBLE", marker, 0o644)


def ensure_built() -> Path:
    standin_repo.ensure_built()  # the lab's test signing key
    target = served_dir()
    if (target / "ollama" / f"v{OLLAMA_VERSION}" / "sha256sum.txt").is_file():
        return target
    BASE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=BASE_DIR))
    try:
        release = work / "ollama" / f"v{OLLAMA_VERSION}"
        release.mkdir(parents=True)
        lines = []
        for name in ARCHIVES:
            _archive(release / name, rocm="rocm" in name)
            lines.append(f"{sha256(release / name)}  ./{name}\n")
        (release / "sha256sum.txt").write_text("".join(lines))
        _apt_repositories(work)
        (work / "openclaw").mkdir()
        with _tgz(work / "openclaw" / OPENCLAW_ARCHIVE) as tar:
            _add(tar, "package/bin/openclaw", (SOURCE / "openclaw").read_bytes(), 0o755)
            _add(tar, "package/TEST-DOUBLE", b"Lab stand-in of OpenClaw: a TEST DOUBLE.\n", 0o644)
        for path in [work, *work.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        with contextlib.suppress(OSError):  # another lab built it meanwhile: keep theirs
            os.rename(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _deb(work: Path, name: str, version: str, content: dict[str, tuple[str, int]]) -> Path:
    root = work / f"pkg-{name}"
    content = dict(content)
    depends = content.pop("DEPENDS", ("", 0))[0]
    for path, (text, mode) in {
        **content,
        f"usr/share/homelab-standin/{name}": (
            f"{name} {version}: the homelab lab's stand-in package, a TEST DOUBLE.\n",
            0o644,
        ),
    }.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        + (f"Depends: {depends}\n" if depends else "")
        + "Maintainer: homelab-as-code lab <lab@homelab.invalid>\nSection: misc\n"
        f"Priority: optional\nDescription: lab stand-in for {name} (a TEST DOUBLE)\n"
        " Installs only a marker (and a stub command); no driver, no runtime.\n"
    )
    for directory in [root, *root.rglob("*")]:
        if directory.is_dir():
            directory.chmod(0o755)
    deb = work / f"{name}_{version.replace(':', '%3a')}_all.deb"
    standin_repo._run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)])
    shutil.rmtree(root)
    return deb


def _apt_repositories(site: Path) -> None:
    """Signed apt repositories of ROCm's, amdgpu's and NodeSource's shape (test doubles)."""
    fingerprint = standin_repo.fingerprint()
    arch = standin_repo._run(["dpkg", "--print-architecture"]).strip()
    for (path, suite, origin), packages in repositories().items():
        top = site / path
        pool = top / "pool" / "main"
        pool.mkdir(parents=True)
        for name, version, content in packages:
            shutil.move(str(_deb(site, name, version, content)), pool)
        label = f"{origin} (lab stand-in, test double)"
        standin_repo.publish_suite(top, suite, origin, label, arch, fingerprint)
    with standin_repo._agent_stopped(standin_repo.KEY_HOME):
        for key in ("rocm/rocm.gpg.key", "gpgkey/nodesource-repo.gpg.key"):
            (site / key).parent.mkdir(parents=True, exist_ok=True)
            standin_repo._gpg("--armor", "--export", "-o", str(site / key), fingerprint)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def base_url() -> str:
    return f"http://{hosts.GATEWAY}:{PORT}"


def ollama_data() -> dict:
    """The lab inventory's overrides: Ollama's release comes from the stand-in."""
    release = served_dir() / "ollama" / f"v{OLLAMA_VERSION}"
    return {
        "ollama_version": OLLAMA_VERSION,
        "ollama_release_url": base_url() + "/ollama/v{version}",
        "ollama_checksums_url": base_url() + "/ollama/v{version}/sha256sum.txt",
        # The stand-in is shaped like a release before 0.14 (.tgz archives); the real
        # defaults name the .tar.zst archives of current releases.
        "ollama_archive": ARCHIVES[0],
        "ollama_rocm_archive": ARCHIVES[1],
        # The main archive pinned; the ROCm one (when a GPU is declared) by the published list.
        "ollama_sha256": {ARCHIVES[0]: sha256(release / ARCHIVES[0])},
        "ollama_models": [{"name": "lab-standin:tiny", "size": "1M"}],
        # The stand-in runs no model and probes no GPU (a container has none): the GPU proof
        # is plan-tested (tests/plan/test_inference_plan.py) and checked on the real VM.
        "ollama_gpu_proof": False,
    }


def rocm_data() -> dict:
    """ROCm's repositories, key and fingerprint: the stand-in's; the R9700 declared."""
    return {
        "rocm_version": ROCM_VERSION,
        "rocm_amdgpu_version": AMDGPU_VERSION,
        "rocm_repo_url": base_url() + "/rocm/apt/{version}",
        "rocm_amdgpu_repo_url": base_url() + "/amdgpu/{amdgpu_version}/ubuntu",
        "rocm_key_url": base_url() + "/rocm/rocm.gpg.key",
        "rocm_key_fingerprint": standin_repo.fingerprint(),
        # The lab's Debian 13 is not a ROCm release: the stand-in serves AMD's noble suite.
        "rocm_apt_suite": SUITE,
        # A container has no R9700 on its bus: the data declares it, the PCI check is off.
        "rocm_check_pci": False,
    }


def pipeline_data() -> dict:
    """Node.js from the stand-in NodeSource repository, OpenClaw from the stand-in archive."""
    archive = served_dir() / "openclaw" / OPENCLAW_ARCHIVE
    return {
        "openclaw_version": OPENCLAW_VERSION,
        "openclaw_source": {
            "kind": "archive",
            "url": f"{base_url()}/openclaw/{OPENCLAW_ARCHIVE}",
            "sha256": sha256(archive),
        },
        "nodejs_version": NODE_VERSION,
        "nodejs_repo_url": base_url() + "/node_{major}.x",
        "nodejs_key_url": base_url() + "/gpgkey/nodesource-repo.gpg.key",
        "nodejs_key_fingerprint": standin_repo.fingerprint(),
    }
