"""ingestd: device telemetry into PostgreSQL, and readings into order updates."""

__version__ = "0.1.0"
