"""``python -m jobs`` runs the ``jobs`` command."""

from jobs.cli.main import main

main()
