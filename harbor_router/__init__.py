"""harbor-router: one pull prefix in front of Harbor's proxy-cache projects."""

__version__ = "0.1.0"
#: The commit this build was made from; a release build writes it here ("unknown" otherwise).
__commit__ = "unknown"
