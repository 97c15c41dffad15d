"""Where events leave the bus: SSE streams, ZeroMQ egress, forward targets, the console."""
