"""One-off studies: scripts behind a choice or a side measurement the README cites (a base
selection, a step-cost comparison), run by hand, not registered as suites."""
