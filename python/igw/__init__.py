"""igw: an inference gateway that picks the best model-server replica for each LLM request.

This module only re-exports; the compiled core lives in ``igw._core``.
"""

from igw._core import Error, __version__

__all__ = ["Error", "__version__"]
