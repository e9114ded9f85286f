"""The ModelVersion kind: verification, phase, aliases, retention and deletion policy of a model's versions."""
