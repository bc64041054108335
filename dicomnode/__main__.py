"""``python -m dicomnode``: the ``dicomnode`` command."""

from dicomnode.cli import main

main()
