"""See tests/README.md for what runs at this depth."""
