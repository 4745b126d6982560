"""Several adapters into one: `merge_many.py` (adapter files), `merge_file.py` (a state file)."""
