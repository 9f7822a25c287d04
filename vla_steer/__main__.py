import sys

from vla_steer.cli import main

sys.exit(main())
