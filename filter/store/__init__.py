"""What is kept: the quarantine behind `QuarantineStore`, durable writes, release marks.

May import `message`, `detect` and `policy` (masked records, envelopes, verdicts); not `scan`
or `ops`, and never a door.
"""
