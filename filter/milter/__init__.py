"""The milter door: libmilter events in, the engine's verdict out as milter actions (`door`),
and the `mailgate milter` process around it on the runner both doors share (`service`).

A door imports only the public seam (`mailgate.filter`), the store and ops.
"""
