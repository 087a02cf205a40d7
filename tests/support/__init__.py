"""Helpers shared by the trust tests (fault walk, concurrency, soak, secrets) and bench/soak.py."""
