"""TorchServe handlers: thin classes over the server-agnostic functions in `contract`."""
