"""The service guests (monitoring, DNS) only: pyinfra inventory.py deploys/services.py"""

from deploys.roles import roll_out
from tasks.common.datamodel.machine import DNS, MONITORING, SERVICE_GUESTS

roll_out(SERVICE_GUESTS, DNS, MONITORING)
