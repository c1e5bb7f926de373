"""Field types that check themselves: names, metrics, aliases, existing files, model arguments, BEIR folders.

A config section declares what a value must be (`queries: ExistingFile`, `path: ModelPath`) instead of
re-checking it in a validator; the messages are the ones every job prints (`file not found: <path>`).

Files a pipeline's earlier stages will write do not exist when the pipeline validates its later stages' configs.
Validating with `context=planned_context(paths)` makes those paths count as existing (a folder planned to hold a
model counts as one that holds none yet), so every stage's full config is checked before any stage runs, on its
real paths.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Literal

from pydantic import AfterValidator, StringConstraints, ValidationInfo

from kd.configs.catalog import local_model_folder, looks_local

PLANNED = "kd.planned"  # the validation-context key: paths earlier pipeline stages write


def planned_context(paths: Iterable[str | Path]) -> dict[str, Any]:
    """The validation context (`Model.model_validate(data, context=...)`) in which `paths` count as existing."""
    return {PLANNED: frozenset(_canonical(p) for p in paths)}


def _canonical(path: str | Path) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))


def is_planned(value: str | Path, context: Any) -> bool:
    """Is `value` a path an earlier pipeline stage writes (see `planned_context`)?"""
    return isinstance(context, dict) and _canonical(value) in context.get(PLANNED, ())


def exists(value: str | Path, kind: Literal["file", "any"] = "file", context: Any = None) -> bool:
    """`value` is an existing file (kind "file") or file or folder ("any"), `~` expanded, or one an earlier stage
    writes."""
    p = Path(str(value)).expanduser()
    found = p.is_file() if kind == "file" else p.exists()
    return found or is_planned(value, context)


def file_problem(value: str | Path, context: Any = None) -> str | None:
    """None for an existing (or planned) file, else `file not found: <value>`: for checks that depend on other
    fields (a file only some modes read); a field that is always a file is an `ExistingFile`."""
    return None if exists(value, "file", context) else f"file not found: {value}"


def _checker(problem: Callable[[str, Any], str | None]) -> AfterValidator:
    """A pydantic validator raising ValueError(problem(value, validation context)) when there is one."""
    def check(value: str, info: ValidationInfo) -> str:
        msg = problem(value, info.context)
        if msg:
            raise ValueError(msg)
        return value

    return AfterValidator(check)


ExistingFile = Annotated[str, _checker(file_problem)]


# ---------------------------------------------------------------------------------------------------- names
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_MAX_LENGTH = 100


def check_name(value: str) -> str:
    """A name that goes into MLflow filter strings, folder names or model URIs (run, sweep, pipeline, registered
    model, evaluation model and task names): 1-100 characters from [A-Za-z0-9._-], starting with a letter or digit.

    That set needs no quoting in a filter literal, a `models:/name@alias` URI or a file name on any OS, cannot climb
    out of a folder (`..`, `/`) or hide in one (`.x`), and 100 characters leave room for what jobs append
    (`<pipeline>-student-<name>`, `<sweep>-<trial id>`) within a file name's 255 bytes. Raises ValueError.
    """
    if not value:
        raise ValueError("empty name: give 1-100 letters, digits, '.', '_' or '-'")
    if not NAME_RE.fullmatch(value) or len(value) > NAME_MAX_LENGTH:
        raise ValueError(f"{value!r}: a name is 1-{NAME_MAX_LENGTH} letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit (it is used in MLflow searches, folder names and model URIs)")
    return value


SafeName = Annotated[str, AfterValidator(check_name)]


def repeated(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, sorted (names of members, models, tasks, stages must be unique)."""
    names = list(names)
    return sorted({n for n in names if names.count(n) > 1})


def check_alias(value: str) -> str:
    """A registered-model alias: not 'latest' nor 'v<N>', which MLflow reserves ('models:/name/latest' already
    means the newest version)."""
    if value.lower() == "latest" or re.fullmatch(r"v\d+", value.lower()):
        raise ValueError(f"alias {value!r} is reserved by MLflow ('models:/name/latest' already means the newest "
                         "version); pick another, e.g. 'current' or 'champion'")
    return value


Alias = Annotated[str, AfterValidator(check_alias)]


def check_metric(value: str) -> str:
    """A metric kd.metrics computes (its parser decides: `ndcg@ten` is refused), in its canonical spelling
    (`NDCG@10` → `ndcg@10`), which is the key the computed results carry."""
    from kd.metrics import parse_metric

    return parse_metric(value).name


Metric = Annotated[str, AfterValidator(check_metric)]


# --------------------------------------------------------------------------------------------------- models
def _hub_offline() -> bool:
    """huggingface_hub's reading of $HF_HUB_OFFLINE (or transformers' $TRANSFORMERS_OFFLINE), read now rather than
    at its import, so a job's environment decides."""
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def model_source_error(value: str, context: Any = None) -> str | None:
    """None when a model argument (a local folder or a hub name) can be loaded, else what is wrong.

    The resolution is kd.models.backbone.resolve's (kd.configs.catalog.local_model_folder: an existing folder, or
    the all-MiniLM-L6-v2 hub name mapped to the packaged copy); any other name must be a well-formed hub id
    (huggingface_hub's own check: `name` or `org/name`, so a relative path of a folder that does not exist yet,
    `outputs/runs/x/final_model`, is refused rather than sent to the hub). Offline ($HF_HUB_OFFLINE set) the id
    must also be in the hub cache, as that is all from_pretrained can read there. Online, a well-formed id that is
    not cached is accepted: checking that it exists would need the network at validation time, and the download
    itself reports a missing repository by name. A path-looking value (./, /, ~) is never a hub id.
    """
    if local_model_folder(value) is not None or is_planned(value, context):
        return None
    if looks_local(value):
        return f"model folder not found: {value}"
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return f"model folder not found: {value} (nor is it a hub model id: name or org/name)"
    if _hub_offline() and not isinstance(try_to_load_from_cache(value, "config.json"), str):
        return (f"{value!r} is not a local folder, and HF_HUB_OFFLINE is set but the hub cache has no copy of it "
                "(download it once online, or give a local folder)")
    return None


def _local_folder_exists(what: str) -> Callable[[str, Any], str | None]:
    """A model argument spelt as a path (kd.configs.catalog.looks_local) must exist; a name is left to the loader."""
    return lambda v, context: f"{what} not found: {v}" if looks_local(v) and not exists(v, "any", context) else None


def _model_path(what: str, *constraints: Any) -> Any:
    return Annotated[str, *constraints, _checker(_local_folder_exists(what))]


NON_EMPTY = StringConstraints(min_length=1)  # before the check: pydantic's own "at least 1 character"
ModelPath = _model_path("model folder")  # a folder or a name: also models:/ URIs and ensemble folders
NonEmptyModelPath = _model_path("model folder", NON_EMPTY)
TeacherPath = _model_path("teacher folder", NON_EMPTY)


# ----------------------------------------------------------------------------------------------------- BEIR
def _beir_problem(corpus_names: tuple[str, ...]) -> Callable[[str, Any], str | None]:
    def problem(v: str, context: Any) -> str | None:
        folder = Path(v).expanduser()
        if is_planned(v, context) or any((folder / name).is_file() for name in corpus_names):
            return None
        return f"not a BEIR folder (no corpus.jsonl): {v}"

    return problem


BeirFolder = Annotated[str, _checker(_beir_problem(("corpus.jsonl", "corpus.jsonl.gz")))]
# the evaluation's dense and document tasks have always asked for an uncompressed corpus.jsonl
PlainBeirFolder = Annotated[str, _checker(_beir_problem(("corpus.jsonl",)))]


def qrels_problem(beir: str, split: str) -> str | None:
    """None when the BEIR folder has qrels for `split`, else the `field split:` line naming the missing file."""
    qrels = Path(beir).expanduser() / "qrels" / f"{split}.tsv"
    return None if qrels.is_file() else f"field split: no qrels file {qrels}"
