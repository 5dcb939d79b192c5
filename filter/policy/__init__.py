"""The rule pack and what it decides: loading, conditions, the verdict and the action plan.

Holds the pack (`pack`, one YAML loader in `yamlsource`), the conditions and the scan context
they read, the envelope, the verdict and the plan both doors execute (`actions`). May import
`message` and `detect`; nothing of scanning, the store, operations or the doors.
"""
