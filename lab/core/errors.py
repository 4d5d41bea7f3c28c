"""One exception type per failure family, each with a one-line message.

The CLI prints an `EmlabError` as a single red line and exits non-zero; anything
else is a bug and keeps its traceback.
"""


class EmlabError(Exception):
    """Base class: a user-facing failure with a one-line explanation."""


class BadInput(EmlabError):
    """Malformed or inconsistent user data (files, arguments, labels)."""


class ModelNotFound(EmlabError):
    """An unknown model name, or a registered model that is not installed."""


class IntegrityError(EmlabError):
    """A file whose content does not match its expected hash or format."""


class IncompatibleError(EmlabError):
    """An artifact (adapter, direction, cache) made for another model or shape."""


class CacheError(EmlabError):
    """An activation cache that cannot be written or read."""


class TrainingDiverged(EmlabError):
    """The training loss became nan or inf; the weights of that step were not applied."""


class NonFiniteLogits(EmlabError):
    """A model produced nan or inf logits while sampling (diverged weights or a failing kernel); nothing
    was sampled from them."""
