"""Everything the trainer writes or reads back: crash-safe writes (atomic), resumable checkpoints
(checkpoint), embeddings in every tool's layout and the full pipeline (export), reading and
identifying any embedding file (formats), what an earlier run left in a folder (previous_run), and
the lock that keeps one run per output folder (lock). No file is written from non-finite vectors."""
