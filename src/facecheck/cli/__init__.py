"""The `facecheck` command line."""
