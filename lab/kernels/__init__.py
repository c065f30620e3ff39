"""The state space model's core computations, one dependency direction: layers (:mod:`lab.nn`) import
these modules, never the reverse.

- :mod:`lab.kernels.ssd_reference`: the pure-PyTorch references (what every fast path must equal) and their argument checks;
- :mod:`lab.kernels.ssd_triton`: the Triton kernel, tested equal to the chunked reference (the only
  module of the library that imports triton);
- :mod:`lab.kernels.ssd`: the dispatch the layers call (Triton on CUDA, then mamba-ssm, else torch).
"""
