"""Core: what every other package stands on (errors, files, configs, the console, stages).

Nothing here knows about models or activations; everything else imports from here.

Main nouns:

- `EmlabError` and its families (`BadInput`, `ModelNotFound`, `IntegrityError`,
  `IncompatibleError`, `CacheError`, `TrainingDiverged`): every failure a user can cause is one
  of these, carrying a one-line message; `user_errors()` prints it as one red line and exits 1.
- `Config`: a dataclass that is also a command line (`parse_config(SweepConfig)` reads
  `--model X --layers 3 4`); `config_dict(cfg)` is its exact JSON.
- `Stages`: a content-keyed stage runner; a result is stored under the hash of its inputs, so a
  rerun skips every stage whose inputs did not change and a crash resumes where it stopped.
- file helpers (`lab.core.io`): exact JSON (`sha256_json`, `write_json_atomic`), table files
  (`write_rows`), an analysis's `summary.json` (`write_summary`, `stored_summary`),
  cross-process locks (`key_lock`) and `emlab_home()` (the model store's root).
- `WallBudget`: a wall-clock budget past which no new piece of work starts.

Getting started::

    from lab.core import Stages, config_dict, parse_config, user_errors

    with user_errors():                              # EmlabError -> one line, exit 1
        cfg = parse_config(MyConfig)                 # the dataclass is the CLI
        result = Stages(folder).run("fit", {"config": config_dict(cfg)}, lambda: fit(cfg))

Modules: `errors`, `io`, `config`, `console` (the shared rich console, `progress`, `table`),
`stages`, `budget`, `lazy` (the lazy package faces used by every `lab` package).
"""

from lab.core.lazy import face_names, lazy_face

FACE = {
    "errors": "EmlabError BadInput ModelNotFound IntegrityError IncompatibleError CacheError TrainingDiverged NonFiniteLogits",
    "config": "Config parse_config config_dict parse_pairs DEFAULT_CACHE_DIR DEFAULT_OUT",
    "stages": "Stages",
    "budget": "WallBudget",
    "console": "progress table user_errors",
    "io": """write_json_atomic write_rows sha256_json sha256_file key_lock atomic_dir emlab_home out_folder write_summary
        stored_summary""",
}
__all__ = face_names(FACE)
__getattr__, __dir__ = lazy_face(__name__, FACE)
