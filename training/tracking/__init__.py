"""MLflow at the edge: stores (`store`), registry aliases (`registry`), per-trial runs (`trial_log`), run notes,
plots, file records, the pyfunc model form, the multi-worker tracking server and the UIs. May import nn, data,
fit and infra; never the search or serving."""
