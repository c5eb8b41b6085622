"""`python -m scorer` = the `scorer` command (handy where the console script is not on PATH)."""

from scorer.cli import main

main()
