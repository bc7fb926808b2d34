"""`python -m node` is the same as the `edge-node` console script."""

from node.cli import main

raise SystemExit(main())
