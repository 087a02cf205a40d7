"""The engine's host side: request, discovery, per-process transaction, journal, lock and the verbs."""
