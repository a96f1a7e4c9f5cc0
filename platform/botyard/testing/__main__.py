"""``python -m botyard.testing`` is ``python -m botyard.emulator``."""

from botyard.emulator.__main__ import main

main()
