"""Importing this module checks that `import probekit` finds probekit-core's package.

Plugins import it before anything from `probekit`, so that the unrelated PyPI project of the same
import name stops them with one clear `ForeignProbekitError` instead of a confusing import error:

    import probekit_core.required  # noqa: F401
"""

from probekit_core import check

check()
