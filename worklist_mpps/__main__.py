from worklist_mpps.cli.main import main
import sys

sys.exit(main())
