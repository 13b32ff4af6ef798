"""What a run shows: progress lines and trackers (progress), validation grids (validation), the loss
plot (plot), the quality report (quality) and --dry_run's plan (plan)."""
