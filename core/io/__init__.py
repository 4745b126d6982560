"""Adapters on disk: lorakit's own file (`adapter_file.py`) and PEFT's layout (`peft.py`)."""
