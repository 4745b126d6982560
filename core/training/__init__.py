"""Training with adapters: `module.py` (`AdapterModule`, the LightningModule base),
`averaging.py` (EMA), `gradient_init.py` (LoRA-GA's gradients), `proximal.py` (L1 steps)."""
