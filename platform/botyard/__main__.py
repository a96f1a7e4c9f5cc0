"""``python -m botyard`` is the ``botyard`` command."""

from botyard.cli import main

main(prog_name="botyard")
