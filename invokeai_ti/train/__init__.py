"""The core of a run, read top to bottom: the Run record (run), setup() in a fixed order (setup),
train_step() and the optimizer step (step), the loop and its periodic jobs (loop), what the run keeps
on disk and resuming (saving), Ctrl-C/SIGTERM (stopping), AdamW and the lr rule (optimizer), and the
quality report of a finished folder (evaluation)."""
