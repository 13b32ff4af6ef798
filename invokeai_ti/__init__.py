"""invokeai-ti: textual-inversion training for Stable Diffusion, the successor of InvokeAI 2.3's trainer."""

__version__ = "0.1.0"
