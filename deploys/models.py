"""Move an Ollama model between ageis-node's SSD and the HDD pool's archive (or list them).

    pyinfra inventory.py deploys/models.py --data models_action=archive --data model=qwen3:32b

``make models-archive MODEL=…``, ``make models-load MODEL=…`` and ``make models-list`` run it.
Each VM of the ageis_node group with an HDD share runs ``homelab-storage-tier`` (installed by
the storage tiering task): archiving copies the model's blobs and manifest to
``/srv/<pool>/archive/models`` (SHA-256 checked) and removes it from Ollama; loading copies it
back. The data is checked before anything connects; a bad value names the key.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.operations import server

from tasks.ageis_node.storage_tier import DATA, SCRIPT, share_of
from tasks.common.datamodel.keys import DataError
from tasks.common.datamodel.machine import AGEIS_NODE
from tasks.common.datamodel.preflight import require_valid_data
from tasks.common.host_keys import require_trusted_host_keys


def _request() -> tuple[str, str | None]:
    settings = DATA.read(host)  # the name's form is checked with the data, before this
    action, model = settings.models_action, settings.model
    if action is None:
        raise DataError(host.name, "models_action", None, "archive, load or list (--data)")
    if action != "list" and model is None:
        raise DataError(host.name, "model", None, f"the model to {action} (--data model=...)")
    return action, model if action != "list" else None


require_valid_data()
require_trusted_host_keys()
if AGEIS_NODE in host.groups:
    action, model = _request()
    if share_of(host.data) is None:
        raise DataError(
            host.name, "guest.share_pool", None, "a pool of the hypervisor to archive models on"
        )
    words = [SCRIPT, f"models-{action}", *([model] if model else [])]
    server.shell(
        name=f"Models: {action} {model or ''}".rstrip(),
        commands=[" ".join(shlex.quote(word) for word in words)],
    )
