"""Serving operations: build archives from the registry, start and stop TorchServe, its HTTP client, rollouts.
May import nn, infra and tracking; never the search."""
