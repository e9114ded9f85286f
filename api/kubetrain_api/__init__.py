"""kubetrain typed API: TrainingRun and ModelVersion (group kubetrain.io, v1alpha1)."""
