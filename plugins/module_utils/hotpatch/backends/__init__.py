"""Platform backends behind the interface in base.py."""
