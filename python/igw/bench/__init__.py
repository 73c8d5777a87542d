"""``igw bench``: compare routing policies side by side on a simulated fleet.

Modules: ``workloads`` (deterministic request schedules), ``client`` (the load generator),
``fleet`` (child processes and their metrics), ``runner`` (one fresh fleet + router per
policy), ``stats`` (percentiles, hot-spot factor, hit rate, the table), ``report`` (JSON,
chart), ``capacity`` (load as a fraction of fleet capacity), ``command`` (the CLI).
"""
