"""Load generation: Locust User classes per API, request building, data, sequences."""
