"""slq: retrieval from a frozen multimodal LLM through a few Shared Latent Queries.

The method is the flat modules, read in this order: `backbone` and `families` (loading, prompts,
the one model call), `queries` and `prompt_cache`, `loss`, `encoder`, `retriever`, `adapter`,
`baselines`, `train` and `distributed`, `embedding` (a corpus to one file, in resumable pieces),
`gguf`, `tiny`. Around it: `data` (records, formats, generated datasets), `evaluation` (metrics,
evaluators, comparisons), `recipes` (demo, evidence, pretraining) and `cli`. Lower layers never
import upper ones.
"""

from . import _compat
from ._version import __version__
from .errors import AdapterError, DataError, SettingError, SLQError
from .retriever import SLQRetriever

_compat.install()

__all__ = ["AdapterError", "DataError", "SLQError", "SLQRetriever", "SettingError", "__version__"]
