"""Serving: build archives from the registry, start and stop TorchServe, its HTTP client, rollouts, batch scoring
and the MLflow model form. May import nn, data, infra and tracking; never the search."""
