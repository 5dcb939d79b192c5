"""`python -m mailgate.filter.cli`: the same as the `mailgate` command."""

from mailgate.filter.cli.main import main

main()
