"""The whole stack: every host gets the base and the tasks of all its roles.

pyinfra inventory.py deploys/full.py
"""

from deploys.roles import ROLES, roll_out

roll_out(*ROLES)
