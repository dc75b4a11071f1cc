"""The broker edge: connection and reconnect, topology, publishing. pika only; no engine."""
