"""pico pipeline: pretrain Pico decoder models through DVC stages and Prefect flows."""
