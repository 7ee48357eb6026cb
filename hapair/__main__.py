"""Allow ``python -m hapair``."""

from hapair.cli import main

raise SystemExit(main())
