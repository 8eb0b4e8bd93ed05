"""One module per panel. A panel renders engine records; it never measures."""
