import sys

from stream_server.cli import main

if __name__ == "__main__":  # worker processes import this module again (spawn): they must not run it
    sys.exit(main())
