"""Comparing a run with a reference run (``distcheck diff``): the pieces, numpy and h5py only.

- :mod:`.ulp`: moving values by one unit in the last place (the perturbation of a noise run);
- :mod:`.shards`: whole-tensor statistics rebuilt from the statistics of shards;
- :mod:`.sides`: what one run shows the comparison, step by step;
- :mod:`.envelope`: how far two correct runs may drift apart, measured or by default;
- :mod:`.factors`: gradients that differ by one factor, and what causes that;
- :mod:`.batches`: whether the two runs saw the same global batches;
- :mod:`.batchnorm`: BatchNorm over the local batch;
- :mod:`.pieces`: which shard of a sharded parameter differs, and by what factor;
- :mod:`.layers`: the first layer whose output differs (activation taps).
"""
