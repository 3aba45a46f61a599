"""The benchmark suite behind ``m2m-gpu bench`` and ``m2m-gpu report``.

* :mod:`.presets`: which kernels at which parameters (``quick``, ``standard``, ``full``);
* :mod:`.cases`: one function per kernel; each checks its result against the reference
  (recall for approximate search) before timing it, and runs the installed baselines
  (NumPy, FAISS, hnswlib, PyTorch ``mm`` + ``topk``);
* :mod:`.timing`: warm-up, device synchronisation, repeats, median / p10 / p90 / p99;
* :mod:`.limits`: the machine's memory and transfer bandwidth and peak arithmetic rate,
  measured in the same run;
* :mod:`.runner`: a run, as the JSON document of ``schema.json`` (:mod:`.schema`);
* :mod:`.plots` and :mod:`.report`: PNG plots and a Markdown / HTML report of one or more
  runs; :mod:`.ui`: progress and a live table on the terminal.

Adding a kernel: write ``def mykernel(ctx, be, params, baselines) -> list[dict]`` in
:mod:`.cases` (check, then ``ctx.time``, then :func:`.cases.row`), register it in
``KERNELS``, give it grids in the presets and its name in the schema's kernel enum.
"""
