"""The `mailgate` command line: one module per command group, registered in `main`.

The top layer: may import everything, the doors included.
"""

OK, FAILED, USAGE = 0, 1, 2  # exit statuses; USAGE as argparse exits on a bad command line
