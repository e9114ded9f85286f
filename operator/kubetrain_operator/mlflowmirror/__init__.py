"""The MLflow model-registry mirror of ModelVersions (``decide`` pure, ``mirror`` its I/O, ``client`` the REST API)."""
