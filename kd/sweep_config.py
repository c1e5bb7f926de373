"""Former home of jobs/sweep.py's config, now kd.configs.sweep and kd.configs.search_space: these names are
re-exported until every import reads kd.configs."""
from kd.configs.search_space import (DISCRETE, KINDS, MAX_CHECKED_POINTS, Dimension, _wants_int,  # noqa: F401
                                     apply_params, assignments, check_search_space, expected_trials, field_path_error,
                                     is_linked, max_concurrent, trial_configs, trial_resources)
from kd.configs.sweep import (TRIAL_SUFFIX_LENGTH, SchedulerConfig, SweepConfig, SweepRegistryConfig,  # noqa: F401
                              TrialDriverConfig, check_sweep_name)
