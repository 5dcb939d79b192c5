"""The milter door: libmilter events in, the engine's verdict out as milter actions.

A door imports only the public seam (`mailgate.filter`), the store and ops.
"""
