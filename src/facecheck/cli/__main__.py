"""`python -m facecheck.cli`."""

from facecheck.cli.main import entry

entry()
