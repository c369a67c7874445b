"""`python -m proxy`: run one edge node (the same as `minicdn serve`)."""

import sys

from proxy.cli import proxy_main

sys.exit(proxy_main())
