"""The concept world: a deterministic renderer of small captioned images (world), a rule-based
judge that says which concept and background a picture shows (judge), the pretrained miniature
Stable Diffusion that draws them (pretrain, shipped under model/), sampling and judging a pipeline
(sampling), the experiment that proves textual inversion recovers a concept (experiment, peer,
report) and the `python -m invokeai_ti.concepts` commands (__main__)."""
