"""The fault soak (``python -m tests.soak``): see ``tests/soak/soak.py``."""
