"""`python -m facecheck.cli`."""

from facecheck.cli.main import main

raise SystemExit(main())
