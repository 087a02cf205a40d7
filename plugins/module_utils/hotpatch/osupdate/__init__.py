"""Microsoft OS updates: hotpatch facts of a Windows host, hotpatch-table classification of KB payloads, and
installing a KB without restart (docs/os-updates.md). Host code: Python 3.8, stdlib + pefile, no ansible."""
