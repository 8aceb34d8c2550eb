"""Wait, bounded, until a TCP port answers: ``python -m homelab_embedder.wait_tcp HOST PORT SECS``.

The vector indexer's ExecStartPre: PostgreSQL on ageis-node may come up after the embedder.
"""

from __future__ import annotations

import socket
import sys
import time


def main() -> None:
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    end = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((host, port), timeout=3).close()
            return
        except OSError as error:
            if time.monotonic() > end:
                sys.exit(f"{host}:{port} did not answer within {seconds:.0f} s: {error}")
            time.sleep(2)


if __name__ == "__main__":
    main()
