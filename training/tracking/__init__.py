"""MLflow at the edge: stores (`store`), registry aliases (`registry`), per-trial runs (`trial_log`), run notes,
plots, file records, the logged model and the links to the UI; and Optuna's private names, in `optuna_private`
alone. May import nn, data, fit and infra; never the search, serving or the tracking server's operations."""
