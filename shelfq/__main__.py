import sys

from shelfq.cli import main

sys.exit(main())
