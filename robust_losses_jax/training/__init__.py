"""Training a stack of models on noisy labels.

- :mod:`step`: the per-device train and eval steps, the train state and the optimiser;
- :mod:`parallel`: the mesh, and running a per-device function with pmap or shard_map;
- :mod:`auto_tau`: ``--tau=auto``, the cutoff's threshold chosen after the delay;
- :mod:`stacking`: a stack's members (labels, rows, keys, hyperparameters) and their data;
- :mod:`programs`: compiled epochs and evaluations of a stack on the devices;
- :mod:`engines`: the devices' engine and the host-streaming one, and the program cache;
- :mod:`checkpoints`, :mod:`recorder`: orbax checkpoints; metrics and training records;
- :mod:`loop`: :func:`loop.fit`, the loop over epochs.
"""
