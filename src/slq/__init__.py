"""slq: retrieval from a frozen multimodal LLM through a few Shared Latent Queries."""

__version__ = "0.1.0"

from .errors import AdapterError, DataError, SLQError  # noqa: E402
from .retriever import SLQRetriever  # noqa: E402

__all__ = ["SLQRetriever", "SLQError", "DataError", "AdapterError", "__version__"]
