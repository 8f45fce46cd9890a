"""The hyperparameter search: options, the Optuna study, one trial (`objective`), search spaces, storages, the
conclusion (refit, register, `@champion`), progress and summaries. May import every layer below and tracking."""
