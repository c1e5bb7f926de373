"""Former home of jobs/pipeline.py's config, now kd.configs.pipeline and kd.configs.pipeline_stages: these names
are re-exported until every import reads kd.configs."""
from kd.configs.catalog import resources_dir  # noqa: F401
from kd.configs.pipeline import PipelineConfig  # noqa: F401
from kd.configs.pipeline_stages import (NOKD_SUFFIX, ROLES, TEACHER_LABEL, EvalStage, MineStage,  # noqa: F401
                                        RayConfig, RegisterStage, ScoreStage, StudentStage, TeachersStage,
                                        TeacherTrainStage, materialized, student_label, twin_name)
