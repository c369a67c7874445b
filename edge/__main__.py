"""`python -m edge`: run one edge of a cluster (`minicdn serve` with the cluster enabled)."""

import sys

from edge.cli import edge_main

sys.exit(edge_main())
