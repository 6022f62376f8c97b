import sys

from reference_server.cli import main

from . import BY_NAME, apply

if len(sys.argv) < 2 or sys.argv[1] not in BY_NAME:
    sys.exit(f"usage: python -m tests.variants {{{','.join(BY_NAME)}}} [server options]")
apply(sys.argv[1])
sys.exit(main(sys.argv[2:]))
