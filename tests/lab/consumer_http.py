"""HTTP requests made from a lab host, as that host sees the service.

Each service port is open only to its declared consumers (the embedding server to ageis-node,
Prometheus to the tailnet, actr-engine to its own host and monitoring); the controller is an
admin source, not a consumer. So a lab test reaches a service the way its real consumer does:
``curl`` runs on the consumer host over SSH, and the status, body and headers come back.
"""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
from typing import Any
from urllib.parse import urlencode

from tests.lab import labctl
from tests.lab.hosts import LabHost

# curl writes the body and the headers to files in a private directory; three lines come back:
# the status code, the body and the headers, each base64 (a WAV body survives the text pipe).
_SCRIPT = """set -u
d=$(mktemp -d) && trap 'rm -rf "$d"' EXIT
read -r config && printf '%s' "$config" | base64 -d > "$d/c"
code=$(curl -sS -X {method} --max-time {timeout} -K "$d/c" {data} -D "$d/h" -o "$d/b" \\
  -w '%{{http_code}}' {url}) || exit $?
printf '%s\\n' "$code"; base64 -w0 "$d/b"; echo; base64 -w0 "$d/h"; echo
"""


def http_from(
    host: LabHost,
    method: str,
    url: str,
    body: Any = None,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) of ``method url`` sent from ``host``; a JSON ``body`` is posted.
    ``headers`` travel in curl's config on stdin, not on a command line (a token among them).

    A refused, dropped or timed-out connection raises ``ConnectionError`` (an ``OSError``, as
    urllib raises from the controller).
    """
    if params:
        url = f"{url}?{urlencode(params)}"
    data = json.dumps(body) if body is not None else ""
    sent = {**({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})}
    # curl reads its headers from a config file (first stdin line, base64) and the body from
    # the rest of stdin.
    config = "".join(f"header = {json.dumps(f'{k}: {v}')}\n" for k, v in sent.items())
    script = _SCRIPT.format(
        method=shlex.quote(method),
        timeout=int(max(1, timeout)),
        data="--data-binary @-" if body is not None else "",
        url=shlex.quote(url),
    )
    result = subprocess.run(
        labctl.ssh_argv(host, script),
        input=base64.b64encode(config.encode()).decode() + "\n" + data,
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        check=False,
    )
    if result.returncode != 0:
        raise ConnectionError(
            f"{host.name}: {method} {url}: curl exited {result.returncode}: {result.stderr[-500:]}"
        )
    code, encoded_body, encoded_headers = result.stdout.splitlines()[-3:]
    return (
        int(code),
        base64.b64decode(encoded_body),
        _last_headers(base64.b64decode(encoded_headers)),
    )


def json_from(host: LabHost, method: str, url: str, body: Any = None, **kwargs: Any) -> Any:
    """The JSON answer of a request from ``host`` that must succeed (2xx)."""
    status, answer, _ = http_from(host, method, url, body, **kwargs)
    assert 200 <= status < 300, f"{host.name}: {method} {url}: {status} {answer[:300]!r}"
    return json.loads(answer)


def _last_headers(raw: bytes) -> dict[str, str]:
    """The headers of the final response (curl -D keeps those of every response it read)."""
    blocks = [b for b in raw.decode("latin-1").split("\r\n\r\n") if b.strip()]
    headers: dict[str, str] = {}
    for line in blocks[-1].splitlines()[1:] if blocks else []:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    return headers
