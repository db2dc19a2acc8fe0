"""``python -m gradscope``: the same command line as the ``gradscope`` script."""

from ._cli import main

raise SystemExit(main())
