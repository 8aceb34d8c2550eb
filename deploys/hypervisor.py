"""The hypervisor only: pyinfra inventory.py deploys/hypervisor.py"""

from deploys.roles import roll_out
from tasks.common.datamodel.machine import HYPERVISOR

roll_out(HYPERVISOR)
