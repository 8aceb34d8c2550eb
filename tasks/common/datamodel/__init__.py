"""The data model: value forms, declared keys, secrets and whole-inventory validation."""
