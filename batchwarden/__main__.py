import sys

from batchwarden.cli import main

sys.exit(main())
