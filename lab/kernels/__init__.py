"""GPU kernels, each beside its pure-PyTorch reference (the spec) and tested equal to it."""
