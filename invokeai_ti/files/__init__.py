"""Everything the trainer writes or reads back: crash-safe writes (atomic), resumable checkpoints
(checkpoint), embeddings in every tool's layout and the full pipeline (export), reading and
identifying any embedding file (formats), what an earlier run left in a folder (previous_run), and
config files: --config read in, OUTPUT/config.toml written (config_file)."""
