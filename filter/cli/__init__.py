"""The `mailgate` command line: one module per command group, registered in `main`.

The top layer: may import everything, the doors included.
"""
