"""Training: the loop and one loss per method (vanilla, PAT, ALP, NAT, EAT), and SNS fine-tuning."""
