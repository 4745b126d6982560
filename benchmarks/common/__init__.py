"""What several suites share: the classifiers they train (sentence_classifier,
prompt_classifier), peak memory (memory), the validation protocol and the suite command
line (command_line)."""
