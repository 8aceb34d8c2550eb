"""The embedder node only: pyinfra inventory.py deploys/embedder.py"""

from deploys.roles import roll_out
from tasks.common.datamodel.machine import EMBEDDER

roll_out(EMBEDDER)
