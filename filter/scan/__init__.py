"""Running the pack: the engine (raw bytes + envelope in, verdict out), worker processes, reload.

May import `message`, `detect` and `policy`.
"""
