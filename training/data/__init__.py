"""The data sets: built-in ones (`datasets`), generated dates (`dates`) and the user's CSV or Parquet files
(`tables`), each with fixed seeded splits. May import `training.nn` and `training.infra`."""
