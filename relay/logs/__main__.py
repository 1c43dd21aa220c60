"""`python -m relay.logs MODULE ...`: a child process run with the relay's logging."""

import sys

from relay.logs import child_main

child_main(sys.argv[1:])
