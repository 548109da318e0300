import sys

from probekit._cli import main

sys.exit(main())
