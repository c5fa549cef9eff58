"""Training, kept apart from inference: contrastive fine-tuning, small CLIPs from scratch,
and the synthetic captioned shapes the reference models are trained on."""
