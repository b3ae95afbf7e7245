"""slq: retrieval from a frozen multimodal LLM through a few Shared Latent Queries."""

__version__ = "0.1.0"
