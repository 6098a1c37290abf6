"""``python -m fleetpki``: the same as the ``fleetpki`` command."""

from fleetpki.cli.main import main

main()
