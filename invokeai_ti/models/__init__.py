"""The frozen model: load a resolved source into components (loading) with its tokenizers
(tokenizers), stream weights into the training dtype (weights), single-file checkpoints
(single_file, single_file_configs), the placeholder tokens spliced into the text encoders
(placeholder), the denoising objective (denoising) and the offline builder of tiny random-weight
pipelines (tiny)."""
