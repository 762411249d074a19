"""The shared vocabulary every layer speaks: questions and predictions, errors, config,
data files, prompts, the journal and the cache folder. Imports no other package here."""
