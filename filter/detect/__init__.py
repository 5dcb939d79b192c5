"""Finding sensitive values in text: regex sets, check-digit validators, masking, detectors.

May import `message` (a detector reads a `Part`), nothing of policy, scanning or the doors.
"""
