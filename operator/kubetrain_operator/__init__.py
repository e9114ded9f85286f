"""kubetrain operator (kopf)."""
