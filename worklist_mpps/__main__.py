import sys

from worklist_mpps.cli.main import main

sys.exit(main())
