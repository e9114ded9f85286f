"""kubetrain trainer: the contract every trainer Job runs."""
