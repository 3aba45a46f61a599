"""The kernel drivers: what runs a kernel family over tiles, blocks and parts, written once.

* ``topk``: the one result order, (key, id) with the smaller ids kept on ties, for
  selections on the host and on the device, and the merge of per-block results;
* ``knn``, ``splat``, ``cells``: the GPU drivers (cuda and vulkan alike) of exact top-k,
  splat ranking and energy, and HRM2's cell scan, over the plumbing of
  ``m2m_gpu.backends.gpu`` and the kernel specs of ``m2m_gpu.backends.abi``;
* ``host_topk``, ``host_splat``, ``host_cells``: the cpu backend's versions (NumPy, BLAS,
  a thread pool, Numba for the cell scan).
"""
