"""What is kept: the quarantine behind `QuarantineStore` (a local folder, or a fleet's
PostgreSQL: `database`, `postgres`), the life of a held message (`lifecycle`), durable writes,
release marks.

May import `message`, `detect` and `policy` (masked records, envelopes, verdicts), and
psycopg; not `scan` or `ops`, and never a door.
"""
