"""`python -m relay.cli`: the same entry point as the `floodgate` script."""

from relay.cli.main import main

raise SystemExit(main())
