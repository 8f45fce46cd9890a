"""What every layer shares: paths and default ports, process plumbing, storage URLs and locks. Imports only
the standard library (and a database driver, lazily)."""
