"""Triton kernels, each beside its plain-PyTorch reference. Nothing here imports model/ or server/."""
