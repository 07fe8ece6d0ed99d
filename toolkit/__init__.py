"""xtk: distil a large teacher into a small student for structured extraction."""
__version__ = "0.1.0"
