"""`python -m ocrheads_lib ...`: see ocrheads_lib.cli."""
import sys

from ocrheads_lib.cli import main

if __name__ == "__main__":
    sys.exit(main())
