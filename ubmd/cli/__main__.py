"""`python -m ubmd.cli` = the `ubmd` command."""

from ubmd.cli import main

main()
