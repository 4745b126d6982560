"""The stratified split genomics has always used, now shared by every domain (../split.py)."""
from lorakit.domains.split import SPLITS, stratified_split

__all__ = ["SPLITS", "stratified_split"]
