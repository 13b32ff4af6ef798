"""`invokeai-ti --gui`: the Textual form (app), its rules without widgets (form: initial values,
paths that follow the trigger, checks before Start) and what the root and machine offer it (choices)."""
