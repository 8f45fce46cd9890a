"""Training one configuration: the loop with early stopping (`loop`), cross-validated selection on small data
(`cross_validation`) and the seq2seq metrics (`translation`). May import `training.nn` and `training.data`;
Optuna and MLflow stay outside, behind an epoch callback."""
