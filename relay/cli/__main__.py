"""`python -m relay.cli`: the same entry point as the `floodgate` script."""

from relay.cli.main import main

# prog_name: usage lines and the completion variable (_FLOODGATE_COMPLETE) say "floodgate"
raise SystemExit(main(prog_name="floodgate"))
