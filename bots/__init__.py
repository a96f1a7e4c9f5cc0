"""Example bots hosted by botyard (see botyard.yaml at the top of the repository)."""
