import sys

from pxo.edge.main import main

sys.exit(main())
