"""What several suites share: the classifiers they train (sentence_classifier,
prompt_classifier), peak memory (memory), the validation protocol, the fixed random
subsets the text suites cut their data to (subset) and the suite command line
(command_line)."""
