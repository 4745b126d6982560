"""`python -m lorakit.cli ...`, the same as `lorakit ...`."""
import sys

from .main import main

sys.exit(main())
