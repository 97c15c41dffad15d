"""Where events enter the bus: HTTP and ZeroMQ ingest."""
