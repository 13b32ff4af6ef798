"""The core of a run, read top to bottom: the Run record (run), setup() in a fixed order (setup),
train_step() and the optimizer step (step), the loop and its periodic jobs (loop), what the run keeps
on disk and resuming (saving), Ctrl-C/SIGTERM (stopping), the optimizer, lr rule and update
(optimizer) with Lion, Prodigy and schedule-free AdamW written out (optimizer_algorithms), min-SNR
weights and offset noise (loss_weighting), and the quality report of a finished folder
(evaluation)."""
