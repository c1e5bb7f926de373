"""Former home of the validator's names, now kd.configs.catalog: these names are re-exported until every import
reads kd.configs."""
from kd.configs.catalog import (ARCHITECTURE_OPTIONS, ARCHITECTURES, LAYER_SCHEMES, LOSS_KINDS,  # noqa: F401
                                LOSS_OPTIONS, MINILM_HUB_NAME, local_model_folder, packaged_minilm, saved_num_layers)
