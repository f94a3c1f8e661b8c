import sys

from pxo.collector.main import main

sys.exit(main())
