"""Allow `python -m devbus`."""

from devbus.cli import main

main()
