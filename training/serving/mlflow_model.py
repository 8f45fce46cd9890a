"""MLflow "model from code" entry: MLflow executes this file to load a logged model (no pickle).

Not imported by the package itself; `tune.log_and_register` passes its path to MLflow.
"""

import mlflow

from training.serving.pyfunc import CheckpointModel

mlflow.models.set_model(CheckpointModel())
