"""The pure engine: bytes -> audio -> features -> probabilities. No broker, no files written."""
