import sys

from kmlp.cli.main import main

sys.exit(main())
