"""One module per message type: a delivery in, a reply out (no broker I/O)."""
