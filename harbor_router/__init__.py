"""harbor-router: one pull prefix in front of Harbor's proxy-cache projects.

The data plane's modules may also exist compiled, in ``_compiled/`` (``_speedups/dataplane.py``):
that directory comes first on this package's path unless ``HARBOR_ROUTER_NO_EXTENSIONS`` is set,
so ``harbor_router.protocol`` and its peers are the compiled modules where they were built and
their source everywhere else.
"""

import os as _os

from ._speedups_env import NO_EXTENSIONS as _NO_EXTENSIONS
from ._speedups_env import REQUIRE_EXTENSIONS as _REQUIRE_EXTENSIONS

__version__ = "0.1.0"
#: The commit this build was made from; a release build writes it here ("unknown" otherwise).
__commit__ = "unknown"

#: "c" when the data plane's modules come from ``_compiled/``, "py" when from their source.
DATAPLANE = "py"
_compiled = _os.path.join(_os.path.dirname(__file__), "_compiled")
if not _NO_EXTENSIONS:
    if _os.path.isdir(_compiled):
        __path__.insert(0, _compiled)
        DATAPLANE = "c"
    elif _REQUIRE_EXTENSIONS:
        raise ImportError(f"HARBOR_ROUTER_REQUIRE_EXTENSIONS=1 but {_compiled} is missing")
