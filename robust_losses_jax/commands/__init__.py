"""The command line: ``robust-losses`` (:mod:`.main`) and one module per subcommand.

``run`` trains on noisy labels and scores the detectors, ``sweep`` runs a grid of runs into one
table, ``find_errors`` audits a dataset's own labels, ``report`` plots a run or a sweep,
``evidence`` writes a sweep's verdict table; :mod:`.cli` holds what they share (flags built from
``Config``, a quiet start-up, one-line errors).
"""
