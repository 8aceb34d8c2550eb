"""The AI VM (ageis-node) only: pyinfra inventory.py deploys/ageis_node.py"""

from deploys.roles import roll_out
from tasks.common.datamodel.machine import AGEIS_NODE

roll_out(AGEIS_NODE)
