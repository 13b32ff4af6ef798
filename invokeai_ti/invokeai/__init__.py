"""The InvokeAI world, read-only and without torch: where the root is and its folder layout
(root), which model a `--model` value names (model_source: models.yaml, a folder, a file, a cached
hub id), invokeai.yaml and InvokeAI 4+'s model database (registry), and the model families by
InvokeAI's base names (families)."""
