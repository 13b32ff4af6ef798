"""Everything the trainer writes or reads back: crash-safe writes (atomic), resumable checkpoints
(checkpoint), embeddings in every tool's layout (export), the full pipeline (pipeline), reading
and identifying any embedding file (formats), what an earlier run left in a folder
(previous_run), the lock that keeps one run per output folder (lock), and config files: --config
read in, OUTPUT/config.toml written (config_file). No file is written from non-finite vectors."""
