"""The demo fleet: simulated Windows hosts made of real PE programs (mingw-w64) run by Wine on loopback.

Modules: build (compile the AppSvc service and its appcore.dll variants), wine (run Windows programs under
Wine), fleet (the supervisor CLI/API and the Ansible inventory), loadgen (traffic and availability figures),
demo (what ``make demo`` runs).
"""
