"""Document ingestion on the embedder: files dropped into an inbox become memories at once.

``files/embedder/homelab_embedder/ingest.py`` as a systemd service watches the inbox with
inotify, reads Markdown, plain text, HTML and PDF files, cuts them into chunks that fit the
embedding model's window (``document_chunk_tokens``, overlap ``document_chunk_overlap_tokens``,
counted with the model's own tokenizer), embeds them through the local embedding server and
writes them to the memory store with their embeddings, so actr-engine retrieves them at once.
An unchanged file changes nothing, a changed one has its chunks replaced in one transaction,
a deleted one has them removed. Details and limits: docs/embedder.md.

The inbox (``document_inbox_path``, default ``<pool path>/documents/inbox`` of
``document_inbox_pool``: the HDD pool where the host has one, else the SSD pool) belongs to
root and the group ``document_inbox_group``, mode 2770: members drop files, and what they drop
takes the group (setgid), which the service reads through; nobody else may look in.
``document_inbox_writers`` names the users put in that group (not the admin user, whose groups
``admin_user`` sets exactly: the admin copies files with sudo).

The service runs as a dynamic user with the inbox group as a supplementary group, everything
but its state directory read-only (the inbox too). It logs in to the memory store as
``document_ingest`` (its own password, secret ``memory_store_document_ingest_password``, as a
systemd credential; TLS verified against the store's CA), a role that row-level security
limits to the rows of ingested documents. It connects where the vector indexer does
(``vector_indexer_db_*``). Health and metrics: port 9311.
"""

from __future__ import annotations

from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Users
from pyinfra.operations import files, server

from tasks.ageis_node.memory_store import server_tls
from tasks.base.admin_user import DATA as ADMIN
from tasks.common.datamodel.forms import UNIX_NAME, Int, ListOf, Optional, Predicate, Size, Str
from tasks.common.datamodel.keys import DataError, Key, Schema
from tasks.common.datamodel.machine import EMBEDDER, MACHINE, POOL_NAME
from tasks.common.datamodel.secrets import Secret, load_secrets
from tasks.common.ports import Port
from tasks.common.secret_files import secret_file
from tasks.embedder.embedder_runtime import APP, VENV, service
from tasks.embedder.embedding_server import DATA as EMBEDDING
from tasks.embedder.embedding_server import PORT as EMBEDDING_PORT
from tasks.embedder.embedding_server import model_dir_on_host
from tasks.embedder.vector_indexer import DATA as INDEXER
from tasks.embedder.vector_indexer import database_host, memory_store_host

PORT = 9311
UNIT = "document-ingest.service"
# Declared by the memory store (tasks/ageis_node/memory_store.py) for ageis-node and the embedder.
SECRET = "memory_store_document_ingest_password"
ROLE = "document_ingest"
CONFIG_DIR = "/etc/document-ingest"
PASSWORD_FILE = f"{CONFIG_DIR}/db-password"
CA_FILE = f"{CONFIG_DIR}/memory-store-ca.crt"
GROUPS = (EMBEDDER,)
# Where an inbox must never be: system directories (the deploy sets the inbox's owner and
# mode), and /home, which the service's sandbox hides (ProtectHome).
SYSTEM_DIRECTORIES = (
    "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/proc", "/root", "/run",
    "/sbin", "/sys", "/usr",
)  # fmt: skip

PORTS = (Port(PORT, "tcp", "document-ingest", probe="http:/health", metrics_path="/metrics"),)


def _inbox_path_ok(path: str) -> bool:
    parts = path.strip("/").split("/")
    return (
        len(parts) >= 2
        and "" not in parts
        and not {".", ".."} & set(parts)
        and not any(path == d or path.startswith(d + "/") for d in SYSTEM_DIRECTORIES)
    )


_INBOX_PATH_FORM = (
    "an absolute path of a directory of its own, at least two levels deep, letters, digits and"
    ' ._- only, not under a system directory or /home, such as "/srv/hdd/documents/inbox"'
)
INBOX_PATH = Predicate(
    Str(r"/[A-Za-z0-9._/-]+", what=_INBOX_PATH_FORM), _inbox_path_ok, _INBOX_PATH_FORM
)

DATA = Schema(
    "document_ingest",
    Key(
        "document_inbox_pool",
        Optional(POOL_NAME),
        None,
        "The host's pool (its `pools` key) whose path holds the inbox; None: hdd where the host"
        " has one, else ssd.",
        GROUPS,
    ),
    Key(
        "document_inbox_path",
        Optional(INBOX_PATH),
        None,
        "The watched directory; None: <pool path>/documents/inbox of document_inbox_pool.",
        GROUPS,
    ),
    Key(
        "document_inbox_group",
        UNIX_NAME,
        "homelab-ingest",
        "Group that owns the inbox (mode 2770): its members drop files, the service reads them.",
        GROUPS,
    ),
    Key(
        "document_inbox_writers",
        ListOf(UNIX_NAME, unique=True),
        [],
        "Existing users put in document_inbox_group (not the admin user, whose groups"
        " admin_user sets exactly: the admin copies files with sudo).",
        GROUPS,
    ),
    Key(
        "document_chunk_tokens",
        Int(32, 254),
        200,
        "Most word pieces in a chunk (the model's 256-token window less [CLS] and [SEP]).",
        GROUPS,
    ),
    Key(
        "document_chunk_overlap_tokens",
        Int(0, 127),
        32,
        "Whole sentences from the end of a chunk repeated at the start of the next one of the"
        " same section, at most this many word pieces (at most half of document_chunk_tokens).",
        GROUPS,
    ),
    Key(
        "document_settle_seconds",
        Int(1, 60),
        2,
        "A file found without an inotify event (at start, by a rescan) is read once its"
        " modification time is this old.",
        GROUPS,
    ),
    Key(
        "document_rescan_interval",
        Int(10, 3600),
        60,
        "Seconds between full scans of the inbox (what events missed: a network filesystem,"
        " rows removed by hand).",
        GROUPS,
    ),
    Key(
        "document_max_size",
        Size(minimum=1024),
        "64M",
        "Largest file ingested; a larger one counts as failed (too_large).",
        GROUPS,
    ),
    Key(
        "document_max_chunks",
        Int(1, 1_000_000),
        10000,
        "Most chunks of one document; more counts as failed (too_many_chunks).",
        GROUPS,
    ),
    checks=(
        lambda v: (
            [
                (
                    "document_chunk_overlap_tokens",
                    v["document_chunk_overlap_tokens"],
                    f"at most half of document_chunk_tokens ({v['document_chunk_tokens'] // 2})",
                )
            ]
            if v["document_chunk_overlap_tokens"] > v["document_chunk_tokens"] // 2
            else []
        ),
    ),
)


def inbox_path(settings: Any) -> str:
    """``document_inbox_path``, else ``<pool path>/documents/inbox`` of the inbox's pool."""
    if settings.document_inbox_path:
        return str(settings.document_inbox_path)
    pools = MACHINE.read(host).pools
    pool = settings.document_inbox_pool or ("hdd" if "hdd" in pools else "ssd")
    if pool not in pools:
        raise DataError(
            host.name,
            "document_inbox_pool",
            settings.document_inbox_pool,
            f"one of this host's pools ({', '.join(pools) or 'it has none: add it to pools'});"
            " None takes hdd, else ssd; or set document_inbox_path",
        )
    return f"{pools[pool]['path'].rstrip('/')}/documents/inbox"


def _writers(settings: Any) -> None:
    """Each of ``document_inbox_writers`` joins the inbox's group (other groups kept)."""
    admin = ADMIN.read(host).admin_user
    if admin in settings.document_inbox_writers:
        raise DataError(
            host.name,
            "document_inbox_writers",
            settings.document_inbox_writers,
            f"users other than the admin user {admin!r} (admin_user sets its groups exactly;"
            " the admin copies files into the inbox with sudo)",
        )
    if not settings.document_inbox_writers:
        return
    users = host.get_fact(Users) or {}
    for user in settings.document_inbox_writers:
        if user not in users:
            raise DataError(
                host.name,
                "document_inbox_writers",
                user,
                "a user that exists on the host (the deploy creates none)",
            )
        server.user(
            name=f"{user} may drop documents ({settings.document_inbox_group})",
            user=user,
            groups=[settings.document_inbox_group],
            append=True,
            ensure_home=False,  # the user's own business
        )


@deploy("Document ingestion", data_defaults=DATA.defaults())
def document_ingest() -> None:
    settings = DATA.read(host)
    indexer = INDEXER.read(host)
    store = memory_store_host()
    db_host = database_host(indexer, store)
    inbox = inbox_path(settings)
    secrets = load_secrets()
    if SECRET not in secrets:
        raise RuntimeError(
            f"host {host.name!r}: secret {SECRET} is missing (the {ROLE} role's password of"
            f" the memory store), in the secrets file or HOMELAB_SECRET_{SECRET.upper()}"
        )
    server.group(
        name=f"Inbox group {settings.document_inbox_group}",
        group=settings.document_inbox_group,
        system=True,
    )
    _writers(settings)
    # The default inbox's parent (<pool>/documents) made explicitly: created on the way, it
    # would take the login's umask (027) and keep the group's members and the service out. A
    # document_inbox_path's parents are the user's.
    if not settings.document_inbox_path:
        files.directory(
            name=f"Document inbox's parent {inbox.rsplit('/', 1)[0]}",
            path=inbox.rsplit("/", 1)[0], user="root", group=settings.document_inbox_group,
            mode="750",
        )  # fmt: skip
    files.directory(
        name=f"Document inbox {inbox} (group members drop files, setgid)",
        path=inbox, user="root", group=settings.document_inbox_group, mode="2770",
    )  # fmt: skip
    files.directory(
        name="Document ingester config directory", path=CONFIG_DIR, user="root", group="root",
        mode="700",
    )  # fmt: skip
    password = secret_file(
        name=f"Memory store password of {ROLE} (root-only file)",
        content=Secret(secrets[SECRET].reveal() + "\n"),
        dest=PASSWORD_FILE,
    )
    ca = files.put(
        name="The memory store's CA (the ingester verifies the server against it)",
        src=StringIO(server_tls(store).ca_cert),
        dest=CA_FILE,
        mode="644",
    )
    service(
        UNIT,
        "document-ingest.service.j2",
        restart_on=[password, ca],
        wait=False,
        venv=VENV,
        app=APP,
        inbox=inbox,
        inbox_group=settings.document_inbox_group,
        origin=host.name,
        model_dir=model_dir_on_host(EMBEDDING.read(host)),
        password_file=PASSWORD_FILE,
        ca_file=CA_FILE,
        db_host=db_host,
        db_port=indexer.vector_indexer_db_port,
        db_name=indexer.vector_indexer_db_name,
        db_user=ROLE,
        db_wait=indexer.vector_indexer_db_wait_seconds,
        embed_url=f"http://127.0.0.1:{EMBEDDING_PORT}",
        chunk_tokens=settings.document_chunk_tokens,
        overlap_tokens=settings.document_chunk_overlap_tokens,
        settle=settings.document_settle_seconds,
        rescan=settings.document_rescan_interval,
        max_bytes=settings.document_max_size,
        max_chunks=settings.document_max_chunks,
        port=PORT,
    )
