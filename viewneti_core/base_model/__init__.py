"""The frozen text-to-image base model: loading (hub, local, shipped), the random-weight builders, and the packaged configs and shipped weights."""
