"""``python -m audit``: the ``equilaw`` command line (``audit.cli``)."""

from audit.cli import main

raise SystemExit(main())
