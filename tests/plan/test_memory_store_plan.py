"""Plans of the memory store (PostgreSQL + pgvector) on ageis-node: Ubuntu 24.04 and Debian 13."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.ageis_node.memory_store import roles_digest, scram_verifier
from tests.plan.conftest import PLAN_SECRETS
from tests.plan.harness import REPO, Plan
from tests.plan.machines import DEBIAN_13

NODE = "ageis-node"
PASSWORD = PLAN_SECRETS["memory_store_actr_engine_password"]


def ageis_plan(plan_of, fleet, release: str, tmp_path: Path | None = None) -> Plan:
    if release == "debian-13":
        # The lab's ageis-node: a Debian 13 guest (the inventory says so in guest.os).
        assert tmp_path is not None
        fleet[NODE].os_release = DEBIAN_13
        text = (REPO / "inventory.py").read_text()
        assert text.count('"os": "ubuntu-24.04"') == 1
        inventory = tmp_path / "inventory.py"
        inventory.write_text(text.replace('"os": "ubuntu-24.04"', '"os": "debian-13"'))
        # ROCm's suite forced as the lab does (AMD's repositories have no Debian suite).
        return plan_of(
            "deploys/ageis_node.py",
            limit=[NODE],
            inventory_file=str(inventory),
            override_data={"rocm_apt_suite": "noble"},
        )
    return plan_of("deploys/ageis_node.py", limit=[NODE])


def cause(caught: pytest.ExceptionInfo) -> BaseException:
    """The task's own exception (pyinfra's CLI wraps it in UnexpectedExternalError)."""
    return getattr(caught.value, "exception", caught.value)


@pytest.mark.parametrize(("release", "major"), [("ubuntu-24.04", 16), ("debian-13", 17)])
def test_distribution_major_cluster_on_the_ssd_pool_with_checksums(
    plan_of, fleet, release: str, major: int, tmp_path: Path
) -> None:
    result = ageis_plan(plan_of, fleet, release, tmp_path)
    install = result.op(NODE, f"Install PostgreSQL {major} and pgvector")
    assert f"postgresql-{major}-pgvector" in " ".join(install.commands)
    env = result.upload(NODE, "/etc/homelab/memory-store/memory-store.env")
    assert f"PG_DATA=/srv/ssd/postgresql/{major}/main\n" in env
    assert f"PG_UNIT=postgresql@{major}-main.service\n" in env
    createcluster = result.upload(NODE, "/etc/postgresql-common/createcluster.d/homelab.conf")
    assert "initdb_options = '--data-checksums'" in createcluster
    assert "create_main_cluster = false" in createcluster
    assert result.op(NODE, f"Create cluster {major}/main").commands == [
        "/usr/local/sbin/memory-store-bootstrap"
    ]
    unit = result.upload(NODE, "/etc/systemd/system/memory-store-integrity.service")
    assert f"Requires=postgresql@{major}-main.service\n" in unit
    assert f"After=postgresql@{major}-main.service\n" in unit
    assert f"RequiresMountsFor=/srv/ssd/postgresql/{major}/main" in unit
    mounts = result.upload(
        NODE, f"/etc/systemd/system/postgresql@{major}-main.service.d/homelab-mounts.conf"
    )
    assert f"RequiresMountsFor=/srv/ssd/postgresql/{major}/main" in mounts


def test_settings_sized_from_ram_listen_and_hba(plan_of, fleet) -> None:
    result = ageis_plan(plan_of, fleet, "ubuntu-24.04")
    conf = result.upload(NODE, "/etc/postgresql/16/main/conf.d/homelab.conf")
    # 16 GiB VM, 12 % for PostgreSQL: ~1.9 GiB budget, half of it shared_buffers.
    assert "shared_buffers = '958MB'" in conf
    assert "listen_addresses = '127.0.0.1,::1,192.168.1.20'" in conf
    assert "password_encryption = 'scram-sha-256'" in conf
    hba = result.upload(NODE, "/etc/postgresql/16/main/pg_hba.conf")
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert rules == [
        ["local", "all", "postgres", "peer"],
        ["local", "memory_store", "actr_engine", "scram-sha-256"],
        ["host", "memory_store", "actr_engine", "127.0.0.1/32", "scram-sha-256"],
        ["host", "memory_store", "actr_engine", "::1/128", "scram-sha-256"],
        ["host", "memory_store", "vector_indexer", "192.168.1.30/32", "scram-sha-256"],
    ]


def test_passwords_travel_only_as_scram_verifiers(plan_of, fleet) -> None:
    result = ageis_plan(plan_of, fleet, "ubuntu-24.04")
    # (every plan secret is the same test double; the Tailscale key file and the clients'
    # root-only credential files, actr-engine's two and the gateway's, legitimately hold it)
    leaks = [c for c in result.commands(NODE) if PASSWORD in c]
    assert leaks == [
        "upload /etc/tailscale/authkey\n" + PASSWORD,
        "upload /etc/actr-engine/db-password\n" + PASSWORD + "\n",
        "upload /etc/actr-engine/api-token\n" + PASSWORD + "\n",
        "upload /etc/openclaw-pipeline/gateway-token\n" + PASSWORD + "\n",
    ]
    sql = result.upload(NODE, "/etc/homelab/memory-store/schema.sql")
    assert f"PASSWORD '{scram_verifier('actr_engine', PASSWORD)}'" in sql
    assert "embedding vector(384) NULL" in sql
    apply = result.op(NODE, "Apply the memory store schema")
    assert apply.commands == [
        "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -f -"
        " < /etc/homelab/memory-store/schema.sql"
    ]


def test_scram_verifier_matches_rfc_7677_shape_and_is_stable() -> None:
    one = scram_verifier("actr_engine", "pencil")
    assert one == scram_verifier("actr_engine", "pencil")
    assert one != scram_verifier("vector_indexer", "pencil")
    method, rest = one.split("$", 1)
    assert method == "SCRAM-SHA-256"
    iterations_salt, keys = rest.split("$")
    assert iterations_salt.startswith("4096:")
    assert len(keys.split(":")) == 2


def test_converged_store_changes_nothing_of_the_schema(plan_of, fleet) -> None:
    from tasks.ageis_node.memory_store import render_schema, schema_comment

    verifiers = {
        r: scram_verifier(r, PLAN_SECRETS[f"memory_store_{r}_password"])
        for r in ("actr_engine", "vector_indexer")
    }
    sql = render_schema(384, verifiers)
    machine = fleet[NODE]
    machine.pg_clusters = [
        {
            "version": 16,
            "name": "main",
            "port": 5432,
            "status": "online",
            "data_directory": "/srv/ssd/postgresql/16/main",
        }
    ]
    machine.memory_store = {
        "checksums": "on",
        "schema": schema_comment(sql),
        "roles": roles_digest(verifiers),
    }
    result = ageis_plan(plan_of, fleet, "ubuntu-24.04")
    assert not [op for op in result.for_host(NODE) if "Create cluster" in op.name]
    # The schema file is uploaded (the simulated host lacks it) and so applied: a converged
    # host with the file in place and matching state runs nothing, checked in the lab.
    assert result.op(NODE, "Apply the memory store schema").conditional


def test_cluster_elsewhere_is_left_alone_and_stops_the_run(plan_of, fleet) -> None:
    fleet[NODE].pg_clusters = [
        {
            "version": 16,
            "name": "main",
            "port": 5432,
            "status": "online",
            "data_directory": "/var/lib/postgresql/16/main",
        }
    ]
    with pytest.raises(BaseException) as error:
        ageis_plan(plan_of, fleet, "ubuntu-24.04")
    assert "cluster 16/main exists in /var/lib/postgresql/16/main, not in" in str(cause(error))


def test_checksums_off_stops_the_run(plan_of, fleet) -> None:
    machine = fleet[NODE]
    machine.pg_clusters = [
        {
            "version": 16,
            "name": "main",
            "port": 5432,
            "status": "online",
            "data_directory": "/srv/ssd/postgresql/16/main",
        }
    ]
    machine.memory_store = {"checksums": "off", "schema": "", "roles": ""}
    with pytest.raises(BaseException) as error:
        ageis_plan(plan_of, fleet, "ubuntu-24.04")
    assert "runs without data checksums" in str(cause(error))
