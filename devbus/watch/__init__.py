"""`devbus watch`: file changes turned into events."""
