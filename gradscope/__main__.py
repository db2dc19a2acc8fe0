"""``python -m gradscope``: the same command line as the ``gradscope`` script."""

from ._cli.main import main

raise SystemExit(main())
