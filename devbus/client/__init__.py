"""The clients: publish over ZeroMQ, subscribe to egress, talk HTTP to a bus."""
