"""The models-from-code file of every registered kd ranker (MLflow stores it beside the model folder and runs it).

`mlflow models serve` and `mlflow.pyfunc.load_model` execute this file, with the logged copy of kd on sys.path, to get
the model object; nothing is unpickled. KDRanker.load_context then reads the HF-format folder (safetensors) from the
artifact.
"""
import mlflow

from kd.runtime.pyfunc import KDRanker

mlflow.models.set_model(KDRanker())
