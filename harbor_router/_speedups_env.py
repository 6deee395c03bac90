"""The one switch that picks compiled speedups or their pure-Python twins (DESIGN §9)."""

import os
import sys

NO_EXTENSIONS = (
    os.environ.get("HARBOR_ROUTER_NO_EXTENSIONS", "") not in ("", "0")
    or sys.implementation.name != "cpython"
)
REQUIRE_EXTENSIONS = os.environ.get("HARBOR_ROUTER_REQUIRE_EXTENSIONS", "") not in ("", "0")
