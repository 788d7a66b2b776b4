"""The runtime every neural backend shares: ONNX Runtime sessions on the best provider here.

Serving needs no PyTorch: models are exported once (``python -m stream_server export ...``) and
run through :class:`~engines.runtime.session.ModelSession`.
"""

from engines.runtime.providers import (
    PROVIDER_ENV,
    ProviderChoiceError,
    available_providers,
    select_providers,
)
from engines.runtime.cache import engine_cache_key, file_sha256

__all__ = [
    "PROVIDER_ENV",
    "ProviderChoiceError",
    "available_providers",
    "select_providers",
    "engine_cache_key",
    "file_sha256",
]
