import sys

from pxo.cloud.main import main

sys.exit(main())
