"""Measurement: the Locust extension with the OVMS metric set, exporters and the web UI tab."""
