"""genrec: generative recommendation on one data pipeline and one evaluation protocol."""

__version__ = "0.1.0"

from genrec.errors import GenrecError  # noqa: E402

__all__ = ["GenrecError", "__version__"]
