"""What runs outside Synapse: the `police-policy` CLI, bootstrap, check-config, status."""
