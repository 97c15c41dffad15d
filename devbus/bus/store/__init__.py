"""Where order and history live."""
