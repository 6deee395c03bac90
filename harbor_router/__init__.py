"""harbor-router: one pull prefix in front of Harbor's proxy-cache projects."""

__version__ = "0.1.0"
