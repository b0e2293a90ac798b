"""Data handling: schema, preprocessing, file I/O and the synthetic telemetry generator."""
