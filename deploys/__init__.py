"""Deploy files: ``full.py`` and one per role, thin compositions of the tasks in ``tasks/``."""
