"""The TrainingRun kind: run → trainer Job → status → ModelVersion."""
