"""Former home of jobs/evaluate.py's config, now kd.configs.evaluate: these names are re-exported until every import
reads kd.configs."""
from kd.configs.catalog import MODEL_URI_PREFIXES  # noqa: F401
from kd.configs.evaluate import (AGGREGATIONS, ComputeConfig, DenseTask, DocumentTask, EfficiencyTask,  # noqa: F401
                                 EvalConfig, ModelSpec, PlotConfig, RerankTask, RunTask, Task, _BeirTask, _Task,
                                 check_aggregation, check_metrics)
