"""Former home of the job configs, now kd.configs (loader, errors, schema, base, fields, common, distill, mine,
score_teachers): these names are re-exported until every import reads kd.configs."""
from kd.configs.base import Strict, _flatten, fingerprint, to_flat_dict  # noqa: F401
from kd.configs.common import MLflowConfig, TextSource  # noqa: F401
from kd.configs.distill import (MODE_LOSS_KINDS, MODES, DistillConfig, FaultInjection, InitConfig,  # noqa: F401
                                LossConfig, RegistryConfig, RunSection, StudentConfig, TeacherConfig, TrainDataConfig,
                                TrainingConfig, ValidationConfig)
from kd.configs.errors import ConfigError, format_validation_error  # noqa: F401
from kd.configs.fields import (NAME_MAX_LENGTH, NAME_RE, SafeName, _hub_offline, check_metric,  # noqa: F401
                               check_name, model_source_error)
from kd.configs.loader import _mapping_key_length, load_config, parse_overrides  # noqa: F401
from kd.configs.loader import set_path as _set_path  # noqa: F401
from kd.configs.mine import MineTriplesConfig  # noqa: F401
from kd.configs.schema import _alternatives, container_of, models_in  # noqa: F401
from kd.configs.schema import field_annotation as _field_annotation  # noqa: F401
from kd.configs.score_teachers import ScoreTeachersConfig, TeacherSpec  # noqa: F401
