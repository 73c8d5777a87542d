"""Allow ``python -m igw`` as a synonym of the ``igw`` console script."""

from igw.cli import main

raise SystemExit(main())
