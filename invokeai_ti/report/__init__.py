"""What a run shows: progress lines and trackers (progress), validation grids (validation), the loss
plot (plot) and the quality report (quality)."""
