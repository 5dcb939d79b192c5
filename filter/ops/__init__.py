"""Running mailgate as a service: configuration, units, audit log, metrics, reporting, rule stats.

May import every layer below the doors (`message`, `detect`, `policy`, `scan`, `store`).
"""
