"""The reward model as MLflow models-from-code: the file MLflow runs to build the model (``mlflow.pyfunc.log_model(
python_model=<this file>)``). The model's ``code/`` folder (``trainers.pyfunc.stage_code``) puts ``trainers.pyfunc`` on the
path; its weights are the ``reward_model`` artifact. Nothing here is pickled."""

import mlflow

from trainers.pyfunc import RewardPyfunc

mlflow.models.set_model(RewardPyfunc())
