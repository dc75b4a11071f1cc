"""The long-running services (worker, trainer): transport + handlers, health, metrics, logs."""
