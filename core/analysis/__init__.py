"""Looking into adapter files: `inspect.py` (what a file holds), `intruders.py` (intruder
dimensions)."""
